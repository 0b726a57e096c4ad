"""Export a plan with torchao, reload it in a fresh process, compare with the simulation."""

import json

import pytest

from quantsense.cli import main
from quantsense.config import Plan, QuantConfig
from quantsense.errors import QuantsenseError
from quantsense.models.units import discover_units
from quantsense.backends.torchao.writer import check_exportable
from tests.conftest import tiny_model


def test_export_matches_simulation_and_predicted_size(standin_dir, sst2_validation, tmp_path, capsys):
    pytest.importorskip("torchao")
    blocks = {str(i): {"bits": 4 if i % 2 else 8} for i in range(6)}
    blocks["2"] = {"bits": 3, "symmetric": False}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"blocks": blocks}))
    out = tmp_path / "exported"
    args = [
        "export",
        str(plan),
        "--model",
        str(standin_dir),
        "--data",
        str(sst2_validation),
        "--limit",
        "200",
        "--out",
        str(out),
        "--no-store",
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "0 predictions differ" in printed
    assert "quantsense imported: False" in printed and "IntxUnpackedToInt8Tensor" in printed
    assert (out / "config.json").is_file() and (out / "quantsense_plan.json").is_file()
    disk = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    source = sum(f.stat().st_size for f in standin_dir.glob("*.safetensors"))
    factor = float(printed.split("predicted for torchao's int8-container layout ")[1].split("x")[0])
    assert source / disk == pytest.approx(factor, rel=0.10)
    # refusing to overwrite: the folder written above is left as it was
    before = sorted(p.name for p in out.iterdir())
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_unexportable_units_are_clear_errors():
    gpt2 = discover_units(tiny_model("gpt2"))
    with pytest.raises(QuantsenseError, match="Conv1D"):
        check_exportable(gpt2, Plan.of({"transformer.h.0.attn.c_attn": QuantConfig(4)}))
    bert = discover_units(tiny_model("bert"))
    with pytest.raises(QuantsenseError, match="embedding"):
        check_exportable(bert, Plan.of({"bert.embeddings.word_embeddings": QuantConfig(8)}))
