"""llama.cpp's rounding of activations in its products (``--runtime-activations``): equal to ggml's own quantizers, applied
to every product that uses a planned weight (the output head that shares a tied embedding too), part of the stored
result's key, and what brings the simulation's KL to llama.cpp's own."""

import ctypes
import json

import numpy as np
import pytest
import torch

import quantsense as qs
from quantsense.cli import main
from quantsense.backends.llama_cpp.activations import round_activations
from quantsense.backends.llama_cpp.ggml_types import TYPES
from tests.conftest import WIKI, save_tiny_llama, tiny_tokenizer

ggml_lib = pytest.importorskip("quantsense.backends.llama_cpp.ggml_lib")
if not ggml_lib.available():
    pytest.skip("llama-cpp-python (ggml's library) is not installed", allow_module_level=True)


def _activations(seed: int = 0) -> np.ndarray:
    """Activation-like rows: a few large channels (outliers) over many small ones, as in a transformer."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(6, 1536, generator=g) * torch.rand(1, 1536, generator=g).pow(4) * 8).numpy()


def test_q8_0_is_ggml_own_quantizer():
    x = _activations()
    assert np.array_equal(round_activations(torch.from_numpy(x), "q8_0").numpy(), ggml_lib.fake_quantize("q8_0", x))


def test_q8_k_is_ggml_own_quantizer():
    lib = ggml_lib.library()
    lib.quantize_row_q8_K_ref.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_int64]
    lib.dequantize_row_q8_K.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64]
    x = _activations(1)
    block = ctypes.create_string_buffer(x.size // 256 * 292)  # block_q8_K: float d, int8 qs[256], int16 bsums[16]
    lib.quantize_row_q8_K_ref(x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), block, x.size)
    ggml = np.empty_like(x)
    lib.dequantize_row_q8_K(block, ggml.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), x.size)
    ours = round_activations(torch.from_numpy(x), "q8_K").numpy()
    np.testing.assert_allclose(ours, ggml, rtol=1e-6, atol=1e-7)  # the same codes; the product d * q in another order
    assert np.abs(ours - x).max() > 100 * np.abs(ours - ggml).max()  # and the rounding is visible


def test_every_type_rounds_its_inputs_as_ggml_cpu_pairs_it():
    assert {TYPES[t].vec_dot for t in ("q4_0", "q5_0", "q8_0", "iq4_nl")} == {"q8_0"}
    assert {TYPES[t].vec_dot for t in ("q2_K", "q4_K", "q6_K", "iq4_xs", "iq3_s", "iq2_xxs")} == {"q8_K"}
    assert qs.parse_format("q4_0").activation_rounding() is qs.parse_format("q5_0").activation_rounding()
    assert (
        qs.parse_format("int4").activation_rounding() is None
        and qs.parse_format("ort-int4").activation_rounding() is None
    )


@pytest.fixture(scope="module")
def tied_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("tied-lm")
    save_tiny_llama(path, tiny_tokenizer(), layers=2, intermediate=256, tied=True)
    return path


def _ws(path, text, runtime: bool, store=None):
    return qs.open_workspace(
        str(path),
        data=str(text),
        task="wikitext",
        max_tokens=1024,
        context=128,
        stride=128,
        quiet=True,
        runtime_activations=runtime,
        store=store,
    )


def test_the_runtime_rounds_the_products_of_planned_weights_and_of_a_tied_head(tied_lm, offline_assets, tmp_path):
    store = str(tmp_path / "s.sqlite")
    weights_only, runtime = (
        _ws(tied_lm, offline_assets["text"], False, store),
        _ws(tied_lm, offline_assets["text"], True, store),
    )
    assert weights_only.evaluator.variant != runtime.evaluator.variant  # a stored result of one is never the other's
    seen = []
    handle = runtime.model.lm_head.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    table = runtime.units.get("model.embed_tokens")
    assert table.tied_to == ["lm_head"]
    with runtime.applier.applied(qs.Plan.of({"model.embed_tokens": runtime.format("q8_0")})):
        runtime.model(**runtime.batches.batches[0].inputs)
    handle.remove()
    x = seen[0]  # the hook registered first sees the input before the rounding hook changes it
    rounded = round_activations(x, "q8_0")
    assert not torch.equal(rounded, x)
    rows = [
        qs.evaluate_plans(ws, {"q8_0 table": qs.Plan.of({"model.embed_tokens": ws.format("q8_0")})})[0]
        for ws in (weights_only, runtime)
    ]
    assert rows[1]["kl_mean"] > rows[0]["kl_mean"] > 0  # the head's rounded inputs add their own error
    plan = qs.Plan.of({n: runtime.format("q8_0") for n in runtime.units.block_units(1)})
    assert not runtime.applier.changes_nothing(plan) and runtime.applier.changes_nothing(qs.Plan())


def test_the_simulation_lands_on_llama_cpp_with_the_runtime_rounding(smollm2, tmp_path, capsys):
    """On SmolLM2 a q4_0 / q5_K / q8_0 plan exported and scored in llama.cpp (KL against an F16 file on the same tokens):
    the simulated KL with --runtime-activations is within 10 % of llama.cpp's, and closer to it than weights alone."""
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "blocks": {str(b): {"format": ("q4_0", "q8_0")[b % 2]} for b in range(30)},
                "units": {f"model.layers.{b}.mlp.down_proj": {"format": "q5_K"} for b in range(0, 30, 3)},
            }
        )
    )
    common = [
        "--task",
        "wikitext",
        "--model",
        str(smollm2),
        "--data",
        str(WIKI),
        "--max-tokens",
        "1024",
        "--context",
        "512",
        "--stride",
        "512",
        "--no-store",
        "--quiet",
    ]
    assert (
        main(
            [
                "export",
                str(plan),
                "--format",
                "gguf",
                "--out",
                str(tmp_path / "a.gguf"),
                "--runtime-activations",
                *common,
            ]
        )
        == 0
    ), capsys.readouterr().err
    report = json.loads((tmp_path / "a-report" / "results.json").read_text())["export"]
    ratio = report["simulated_kl_mean"] / report["llama_cpp_kl_mean"]
    assert 0.9 < ratio < 1.1, ratio
    ws = qs.open_workspace(
        str(smollm2), data=str(WIKI), task="wikitext", max_tokens=1024, context=512, stride=512, quiet=True
    )
    weights_only = qs.evaluate_plans(ws, {"plan": qs.load_plan(ws, str(plan))})[0]["kl_mean"]
    assert weights_only < report["simulated_kl_mean"]
    assert abs(ratio - 1) < abs(weights_only / report["llama_cpp_kl_mean"] - 1)
