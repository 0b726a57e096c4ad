"""ggml's K and IQ4 formats through llama.cpp's own library: read back bit for bit as gguf-py reads the same bytes,
on the SmolLM2 Q4_1 weights and the same weights off the grid (the float stand-in's dither); shape refusals name
llama.cpp's fallback; sizes are ggml's."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from quantsense.errors import QuantsenseError
from quantsense.backends.llama_cpp.formats import GGMLFormat
from quantsense.quantization.formats import parse_format
from quantsense.backends.llama_cpp.ggml_types import TYPES, names
from quantsense.backends.llama_cpp.gguf_quants import fake_quantize_gguf
from tests.conftest import ASSETS
from tests.backends.llama_cpp.test_gguf_quants import _smollm2_weights

pytestmark = pytest.mark.slow  # every test here runs llama.cpp's own library

gguf = pytest.importorskip("gguf")
ggml_lib = pytest.importorskip("quantsense.backends.llama_cpp.ggml_lib")
if not ggml_lib.available():
    pytest.skip("llama-cpp-python (ggml's library) is not installed", allow_module_level=True)

NAMES = list(names("ggml"))
# GGUF name -> the Hugging Face name the float stand-in's tool seeds its dither with
TENSORS = {
    "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
    "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
    "blk.29.ffn_gate.weight": "model.layers.29.mlp.gate_proj.weight",
}


def _dither():
    """The float stand-in's own per-tensor dither (../shared/tools/make_float_smollm2.py)."""
    path = ASSETS.parent / "tools" / "make_float_smollm2.py"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    spec = importlib.util.spec_from_file_location("make_float_smollm2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dither


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """The Q4_1 file's weights ('q41 ...') and the float stand-in's ('float ...': dithered off the grid, as bf16)."""
    q41 = _smollm2_weights(tuple(TENSORS))
    dither = _dither()
    out = {f"q41 {k}": v for k, v in q41.items()}
    out.update({f"float {k}": dither(TENSORS[k], v, "q4_1").to(torch.bfloat16).float() for k, v in q41.items()})
    return out


def _fits(name: str, weight: torch.Tensor) -> bool:
    return weight.shape[1] % TYPES[name].block == 0


def test_layout_table_is_ggml_own():
    for name, (block, nbytes) in ((n, (TYPES[n].block, TYPES[n].nbytes)) for n in NAMES):
        assert ggml_lib.block_size(name) == block
        assert ggml_lib.row_bytes(name, 4 * block) == 4 * nbytes


@pytest.mark.parametrize("name", NAMES)
def test_fake_quantization_is_what_gguf_reads_from_ggml_bytes(weights, name):
    fmt = parse_format(name)
    done = 0
    for key, weight in weights.items():
        if not _fits(name, weight):
            continue
        ones = np.ones(weight.shape[1], np.float32) if TYPES[name].needs_imatrix else None  # their grids need weights
        ours = (
            fmt.fake_quantize(weight)
            if ones is None
            else torch.from_numpy(ggml_lib.fake_quantize(name, weight.numpy(), ones))
        )
        data = ggml_lib.quantize(name, weight.numpy(), ones)
        qtype = gguf.GGMLQuantizationType[name.upper()]
        read = gguf.quants.dequantize(np.frombuffer(data, dtype=np.uint8).reshape(weight.shape[0], -1), qtype)
        assert torch.equal(ours, torch.from_numpy(read.copy())), key
        assert len(data) * 8 == fmt.storage_bits(tuple(weight.shape))
        error = float((ours - weight).norm() / weight.norm())
        assert 0 < error < {1: 0.75, 2: 0.45, 3: 0.25, 4: 0.12, 5: 0.06, 6: 0.03}[fmt.code_bits], (key, error)
        done += 1
    assert done >= 2  # ffn_down (1536 wide) and ffn_gate (576 wide only for 32-blocks) at least, in both models


def test_more_bits_mean_less_error_on_float_weights(weights):
    weight = weights["float blk.0.ffn_down.weight"]
    errors = [
        float((parse_format(n).fake_quantize(weight) - weight).norm()) for n in ("q2_K", "q3_K", "q4_K", "q5_K", "q6_K")
    ]
    assert errors == sorted(errors, reverse=True)


def test_the_q4_1_grid_flatters_q4_K(weights):
    # the reason the float stand-in exists: on the Q4_1 grid q4_K's error is a fraction of its error off the grid
    q4k = parse_format("q4_K")
    on, off = weights["q41 blk.0.ffn_down.weight"], weights["float blk.0.ffn_down.weight"]
    rel = [float((q4k.fake_quantize(w) - w).norm() / w.norm()) for w in (on, off)]
    assert rel[0] < 0.5 * rel[1]


@pytest.mark.parametrize("name", ["q4_0", "q5_0", "q8_0", "q4_1", "q5_1"])
def test_ggml_legacy_quantizers_equal_the_torch_port(weights, name):
    # the library is the reference the torch port was written against: same values, bit for bit
    for weight in weights.values():
        from_ggml = ggml_lib.fake_quantize(name, weight.numpy())
        assert torch.equal(torch.from_numpy(from_ggml), fake_quantize_gguf(weight, name))


def test_transposed_weights_quantize_along_the_other_axis(weights):
    weight = weights["float blk.0.ffn_down.weight"]  # [576, 1536]: rows of 1536 fit q4_K; stored [in, out] they do too
    fmt = parse_format("q4_K")
    assert torch.equal(fmt.fake_quantize(weight.t().contiguous(), transposed=True), fmt.fake_quantize(weight).t())


@pytest.mark.parametrize("name", [n for n in NAMES if TYPES[n].block == 256])
def test_rows_that_do_not_fit_are_refused_naming_llama_cpp_fallback(name):
    fmt = GGMLFormat(name)
    with pytest.raises(QuantsenseError, match=f"multiples of 256.*falls back to {TYPES[name].fallback}"):
        fmt.check_shape((576, 576), where="model.layers.0.self_attn.q_proj")
    with pytest.raises(QuantsenseError, match="multiples of 256"):
        fmt.fake_quantize(torch.zeros(4, 576))
    with pytest.raises(QuantsenseError, match="multiples of 256"):
        ggml_lib.quantize(name, np.zeros((4, 576), dtype=np.float32))


def test_names_parse_in_any_case_and_keep_llama_cpp_spelling():
    assert parse_format("Q4_K") == parse_format("q4_k") == GGMLFormat("q4_K")
    assert parse_format("IQ4_XS").name == "iq4_xs"
    assert GGMLFormat("q6_K").nominal_bits == pytest.approx(6.5625)
    with pytest.raises(QuantsenseError, match="unknown ggml format"):
        GGMLFormat("q7_K")


def test_without_llama_cpp_the_formats_say_how_to_install(monkeypatch):
    monkeypatch.setattr(ggml_lib, "library_path", lambda: (_ for _ in ()).throw(QuantsenseError(ggml_lib.INSTALL_HINT)))
    ggml_lib.library.cache_clear()
    try:
        with pytest.raises(QuantsenseError, match="install llama-cpp-python"):
            GGMLFormat("q4_K").check_model(None, named=True)
    finally:
        monkeypatch.undo()
        ggml_lib.library.cache_clear()


@pytest.mark.parametrize("name", ["q8_0", "q4_K", "iq4_xs"])
def test_ggml_quantizes_the_same_bytes_split_across_threads_as_on_one(name, monkeypatch):
    from quantsense.backends.llama_cpp import ggml_lib

    rows = np.random.default_rng(0).standard_normal((601, 512)).astype(np.float32)  # over the threshold, odd rows
    imatrix = np.abs(rows).mean(axis=0) + 0.1
    assert rows.size >= ggml_lib.PARALLEL_MIN_WEIGHTS
    split = ggml_lib.quantize(name, rows, imatrix)
    monkeypatch.setattr(ggml_lib, "PARALLEL_MIN_WEIGHTS", 1 << 40)  # every tensor on one thread
    assert ggml_lib.quantize(name, rows, imatrix) == split
    assert np.array_equal(ggml_lib.dequantize(name, split, rows.shape), ggml_lib.fake_quantize(name, rows, imatrix))
