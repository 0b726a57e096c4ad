"""llama.cpp's presets as per-tensor types: the port equals what llama_model_quantize itself writes, on SmolLM2 (rows
of 576 that K-quants cannot hold: llama.cpp's fallbacks) and on an untied 16-layer Llama whose rows all hold K blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from quantsense.errors import QuantsenseError
from quantsense.backends.llama_cpp.presets import FTYPES, PRESETS, preset_types, use_more_bits
from quantsense.mixed_precision.presets import preset_name

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")
from quantsense.backends.llama_cpp.llama_quantize import llama_quantize  # noqa: E402


def _rows(path) -> tuple[dict[str, int], int]:
    reader = gguf.GGUFReader(str(path))
    rows = {t.name: int(t.shape[0]) for t in reader.tensors if len(t.shape) >= 2}
    blocks = 1 + max(int(n.split(".")[1]) for n in rows if n.startswith("blk."))
    return rows, blocks


def _written_types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(str(path)).tensors if len(t.shape) >= 2}


def _port(preset: str, rows: dict[str, int], blocks: int, has_imatrix: bool = False) -> dict[str, str]:
    return {name: qtype.lower() for name, qtype in preset_types(preset, rows, blocks, has_imatrix).items()}


@pytest.fixture(scope="module")
def untied_llama(tmp_path_factory, smollm2):
    """A random 16-layer Llama (hidden 256, untied output) in GGUF, through quantsense's own converter."""
    from quantsense.backends.llama_cpp.gguf_convert import convert_hf_to_gguf

    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    return convert_hf_to_gguf(model, tokenizer, tmp_path_factory.mktemp("llama16") / "llama16-f32.gguf", "llama16")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_types_equal_llama_model_quantize_on_smollm2(smollm2, tmp_path, preset):
    out = llama_quantize(smollm2, tmp_path / f"{preset}.gguf", FTYPES[preset], nthread=2)
    rows, blocks = _rows(smollm2)
    assert _written_types(out) == _port(preset, rows, blocks)


@pytest.mark.parametrize("preset", ["Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M"])
def test_preset_types_equal_llama_model_quantize_on_an_untied_llama(untied_llama, tmp_path, preset):
    out = llama_quantize(untied_llama, tmp_path / f"{preset}.gguf", FTYPES[preset], nthread=2)
    rows, blocks = _rows(untied_llama)
    types = _port(preset, rows, blocks)
    assert _written_types(out) == types
    assert types["output.weight"] == "q6_k" and "token_embd.weight" in types  # untied: output at q6_K, rows of 256
    assert {t for n, t in types.items() if n.startswith("blk.")} <= {"q3_k", "q4_k", "q5_k", "q6_k"}  # no fallback


def test_an_imatrix_changes_q4_0_first_ffn_down_layers(smollm2, tmp_path):
    rows, blocks = _rows(smollm2)
    importance = {name: np.ones(width, dtype=np.float32) for name, width in rows.items()}
    out = llama_quantize(smollm2, tmp_path / "q4_0-imatrix.gguf", FTYPES["Q4_0"], importance=importance, nthread=2)
    types = _port("Q4_0", rows, blocks, has_imatrix=True)
    assert _written_types(out) == types
    assert [n for n, t in types.items() if t == "q4_1"] == [f"blk.{i}.ffn_down.weight" for i in range(blocks // 8)]


def test_smollm2_q4_k_m_is_mostly_fallbacks():
    # the account of it: 576-wide rows fall back (q4_K -> q5_0, q6_K -> q8_0), ffn_down (1536) stays K
    rows = {"token_embd.weight": 576}
    for i in range(30):
        rows.update(
            {f"blk.{i}.{n}.weight": 576 for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up")}
        )
        rows[f"blk.{i}.ffn_down.weight"] = 1536
    types = preset_types("q4_k_m", rows, 30)
    assert types["token_embd.weight"] == "q8_0"
    assert (
        sum(t == "q8_0" for n, t in types.items() if "attn_v" in n)
        == sum(use_more_bits(i, 30) for i in range(30))
        == 14
    )
    assert {t for n, t in types.items() if "ffn_down" in n} == {"q6_K", "q4_K"}
    assert {t for n, t in types.items() if "attn_q" in n} == {"q5_0"}


def test_unknown_preset_lists_the_known_ones():
    assert preset_name("q4_k_m") == "Q4_K_M"
    with pytest.raises(QuantsenseError, match="Q3_K_M, Q4_K_S, Q4_K_M"):
        preset_name("Q4_K_XL")
