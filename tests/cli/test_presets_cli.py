"""llama.cpp presets in the CLI: measured beside an allocation at their own size (SmolLM2, a small token range)."""

import json

import pytest

from quantsense.cli import main
from tests.conftest import WIKI

pytest.importorskip("llama_cpp")


def test_allocate_at_a_preset_size_measures_the_preset_beside(smollm2, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["allocate", "--max-size-of", "q4_k_m", "--task", "wikitext", "--model", str(smollm2), "--data", str(WIKI),
                 "--max-tokens", "512", "--context", "256", "--stride", "256", "--unit", "block",
                 "--candidates", "q4_0", "q5_0", "q8_0", "q4_K", "q6_K", "--no-store", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = {r["plan"]: r for r in json.loads((out / "results.json").read_text())["frontier"]["rows"]}
    preset, allocated = rows["preset Q4_K_M"], rows["allocated@Q4_K_M size"]
    assert preset["kind"] == "preset" and allocated["budget"]["preset"] == "Q4_K_M"
    assert allocated["avg_bits"] <= preset["avg_bits"] + 1e-9  # no more bits per block linear weight
    assert allocated["model_mb"] <= preset["model_mb"] + 1e-9  # and the same types outside the blocks
    assert 0 < allocated["kl_mean"] < 1 and 0 < preset["kl_mean"] < 1
    assert "uniform q4_K" not in rows and "uniform q4_0" in rows  # 576-wide rows hold no q4_K: no uniform plan
    plan = json.loads((out / "plans" / "allocated_Q4_K_M_size.json").read_text())
    assert plan["units"]["model.embed_tokens"] == {"format": "q8_0"}  # the preset's own type for the tied embedding
