"""llama.cpp presets in the CLI: measured beside an allocation at their own size (SmolLM2, a small token range)."""

import json

import pytest

from quantsense.cli import main
from tests.conftest import WIKI

pytest.importorskip("llama_cpp")


@pytest.mark.parametrize("outside", ["preset", "allocate"])
def test_allocate_at_a_preset_size_measures_the_preset_beside(smollm2, tmp_path, capsys, outside):
    out = tmp_path / "out"
    code = main(
        [
            "allocate",
            "--max-size-of",
            "q4_k_m",
            "--task",
            "wikitext",
            "--model",
            str(smollm2),
            "--data",
            str(WIKI),
            "--max-tokens",
            "1024",
            "--context",
            "256",
            "--stride",
            "256",
            "--unit",
            "block",
            "--candidates",
            "q4_0",
            "q5_0",
            "q8_0",
            "q4_K",
            "q6_K",
            "--no-store",
            "--quiet",
            "--out",
            str(out),
            *(["--outside", "preset"] if outside == "preset" else []),
        ]
    )  # allocate: the default with a preset
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    rows = {r["plan"]: r for r in json.loads((out / "results.json").read_text())["frontier"]["rows"]}
    preset, allocated = rows["preset Q4_K_M"], rows["allocated@Q4_K_M size"]
    assert preset["kind"] == "preset" and allocated["budget"]["preset"] == "Q4_K_M"
    assert allocated["model_mb"] <= preset["model_mb"] + 1e-9  # the whole model no larger
    assert 0 < allocated["kl_mean"] < 1 and 0 < preset["kl_mean"] < 1
    assert "uniform q4_K" not in rows and "uniform q4_0" in rows  # 576-wide rows hold no q4_K: no uniform plan
    assert "Not measured: uniform q4_K, since q4_K needs rows that are multiples of 256 weights" in printed
    plan = json.loads((out / "plans" / "allocated_Q4_K_M_size.json").read_text())
    if outside == "preset":
        assert allocated["avg_bits"] <= preset["avg_bits"] + 1e-9  # no more bits per block linear weight
        assert plan["units"]["model.embed_tokens"] == {"format": "q8_0"}  # the preset's own type for the tied embedding
    else:  # the tied embedding is a unit of the allocation, with the candidates its 576-wide rows hold
        assert abs(allocated["budget"]["max_bytes"] - preset["model_mb"] * 1e6) < 1
        assert plan["units"].get("model.embed_tokens", {"format": "fp32"})["format"] in ("q4_0", "q5_0", "q8_0", "fp32")
