"""The toy format, registered by its test alone, through every phase: parse, plan files, fake quantization with bounds,
its own cost, sensitivity, allocation, frontier, the report, and an export refused by its entry."""

import json

import pytest
import torch

import quantsense as qs
from quantsense.errors import QuantsenseError
from quantsense.quantization.fake_quant import sqnr_db
from quantsense.quantization.formats import FORMAT_FAMILIES, format_from_dict, parse_format, register_format
from quantsense.visualization.results_folder import write_results_folder
from tests.toys.toy3 import GROUP, Toy3


@pytest.fixture
def toy3():
    register_format(Toy3)
    yield Toy3()
    FORMAT_FAMILIES.pop(Toy3.family)


def test_parsed_by_name_and_read_back_from_a_plan_file(toy3):
    assert parse_format("toy3") == toy3 and parse_format(" TOY3 ") == toy3
    assert format_from_dict(toy3.to_dict()) == toy3 == format_from_dict({"format": "toy3"})
    with pytest.raises(QuantsenseError, match="toy3 \\(a test format\\)"):
        parse_format("toy4")


def test_numerics_and_cost(toy3):
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    q = toy3.fake_quantize(w)
    groups = q.reshape(-1, GROUP)
    assert all(len(torch.unique(g)) <= 8 for g in groups)  # at most 2**3 levels per group
    assert 14.0 < sqnr_db(w, q) < 22.0  # 3 bits with a min and scale per 16 weights: about 18 dB on Gaussian weights
    assert torch.equal(toy3.fake_quantize(q), q) or sqnr_db(q, toy3.fake_quantize(q)) > 40  # (almost) idempotent
    assert torch.equal(toy3.fake_quantize(w.t().contiguous(), transposed=True), q.t())
    assert toy3.storage_bits((64, 128)) == 64 * 128 * 5  # 3-bit codes + 2 fp16 per 16 weights
    with pytest.raises(QuantsenseError, match="multiples of 16"):
        toy3.check_shape((8, 24), where="x")


def test_every_phase_and_the_report(toy3, offline_assets, tmp_path):
    ws = qs.open_workspace(
        offline_assets["cls_model"],
        tokenizer=offline_assets["tokenizer"],
        data=str(offline_assets["tsv"]),
        quiet=True,
        device="cpu",
    )
    base = qs.baseline(ws)
    sens = qs.sensitivity(ws, ["toy3", "int8"])
    toy_rows = [r for r in sens.rows if r["format"] == "toy3"]
    assert len(toy_rows) == ws.units.num_blocks
    assert all(abs(r["bits_per_weight"] - 5.0) < 1e-9 for r in toy_rows)
    int8 = {r["unit"]: r["kl_mean"] for r in sens.rows if r["format"] == "int8"}
    assert all(r["kl_mean"] > int8[r["unit"]] for r in toy_rows)  # 3 bits hurt more than 8, unit by unit
    front = qs.frontier(ws, [6.0], ["toy3", "int8"])
    allocated = next(r for r in front.rows if r["kind"] == "allocated")
    assert allocated["avg_bits"] <= 6.0 + 1e-9 and allocated["budget"] == {"avg_bits": 6.0}
    uniform = {r["format"]: r for r in front.rows if r["kind"] == "uniform"}
    assert set(uniform) == {"toy3", "int8"} and abs(uniform["toy3"]["avg_bits"] - 5.0) < 1e-9
    hand = [r for r in front.rows if r["kind"] == "hand"]  # toy3's family defines no strategy levels: ranked at int8
    assert len(hand) == 3 and all(set(r["formats"]) <= {"int8", "int6", "int4"} for r in hand)
    result = qs.StudyResult(
        {"command": "test", "created": "", "versions": {}, "git": None},
        ws.describe(),
        base,
        sensitivity=sens,
        frontier=front,
        formats=ws.format_table(),
    )
    written = write_results_folder(tmp_path / "out", result.to_dict())
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["formats"]["toy3"]["bits_per_weight"] == 5.0 and saved["formats"]["toy3"]["family"] == "toy"
    html = (tmp_path / "out" / "report.html").read_text()
    assert "test format: 3-bit codes per group of 16" in html  # its own glossary entry
    assert {p.name for p in written} >= {"frontier.png", "sensitivity.png", "report.html", "summary.md"}
    with pytest.raises(QuantsenseError, match="planned as toy3, which the torchao export cannot write"):
        qs.export(
            ws,
            qs.Plan.from_json_dict(front.plans[allocated["plan"]])
            if "toy3" in allocated["formats"]
            else qs.Plan.of({ws.units.linear_units()[0]: toy3}),
            tmp_path / "export",
        )
