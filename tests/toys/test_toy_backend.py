"""A fourth runtime, added as one folder (``toy_backend/``) and this test: its format, export target and check reach
every part of quantsense through the registries, and nothing in quantsense names it."""

import ast
from pathlib import Path

import numpy as np
import pytest

import quantsense as qs
from quantsense.errors import QuantsenseError
from quantsense.exporters import export_target, export_targets
from quantsense.quantization.formats import parse_format

TOY = Path(__file__).parent / "toy_backend"


@pytest.fixture
def toyrt():
    from tests.toys import toy_backend

    toy_backend.register_format(toy_backend.ToyRowFormat)  # registered again if an earlier test took it out
    toy_backend.register_exporter(toy_backend.ToyExporter)
    yield toy_backend
    toy_backend.unregister()


def test_the_toy_backend_uses_the_registries_alone():
    imported = {
        node.module
        for path in TOY.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not {m for m in imported if m.startswith("quantsense.backends")}  # no other runtime's code
    assert {"quantsense.exporters.base", "quantsense.quantization.formats"} <= imported


def test_registered_format_and_target(toyrt):
    fmt = parse_format("tr4")
    assert fmt.name == "tr4" and "toyrt" in export_targets() and export_target("toyrt").single_file
    weight = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32)
    codes, scale = toyrt.quantize_rows(weight)
    assert codes.min() >= -7 and codes.max() <= 7 and scale.shape == (8, 1)
    assert fmt.storage_bits((8, 64)) == 8 * 64 * 4 + 8 * 32
    with pytest.raises(QuantsenseError, match="unknown export format 'toyrt2'"):
        export_target("toyrt2")


def test_sweep_export_and_its_own_check(toyrt, offline_assets, tmp_path):
    ws = qs.open_workspace(
        offline_assets["cls_model"],
        tokenizer=offline_assets["tokenizer"],
        data=str(offline_assets["tsv"]),
        quiet=True,
        device="cpu",
    )
    sens = qs.sensitivity(ws, ["tr4", "int8"])
    tr4 = {r["unit"]: r["kl_mean"] for r in sens.rows if r["format"] == "tr4"}
    int8 = {r["unit"]: r["kl_mean"] for r in sens.rows if r["format"] == "int8"}
    assert len(tr4) == ws.units.num_blocks and all(tr4[u] > int8[u] > 0 for u in tr4)  # 4 bits hurt more than 8
    units = ws.units.linear_units()[:3]
    plan = qs.Plan.of({name: parse_format("tr4") for name in units})
    report = qs.export(ws, plan, tmp_path / "model.npz", target="toyrt")  # verified by the target's own check
    assert report["tensors_read"] == 3 and report["quantsense_imported_by_reload"] is False
    assert report["max_weight_difference"] < 1e-6  # the file holds the weights the simulation measured
    assert any("read back in a fresh process" in line for line in report["lines"])
    with pytest.raises(QuantsenseError, match="planned as tr4, which the torchao export cannot write"):
        qs.export(ws, plan, tmp_path / "torchao", target="torchao")
    with pytest.raises(QuantsenseError, match="planned as int8, which the toyrt export cannot write"):
        qs.export(ws, qs.Plan.of({units[0]: parse_format("int8")}), tmp_path / "int8.npz", target="toyrt")
    assert not (tmp_path / "int8.npz").exists()
