"""The importance matrix: collected as llama.cpp defines it, written in its GGUF layout and read back, bound to the
formats whose ggml quantizer takes one (then bit for bit ggml's weighted quantization), kept off the scored tokens."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from quantsense.cli import main
from quantsense.errors import QuantsenseError
from quantsense.quantization.formats import format_from_dict, parse_format
from quantsense.backends.llama_cpp.ggml_types import TYPES
from quantsense.backends.llama_cpp.imatrix_file import load, save
from quantsense.backends.llama_cpp.imatrix import Imatrix, collect, known
from quantsense.quantization.plan import Plan
from tests.conftest import WIKI
from tests.backends.llama_cpp.test_gguf_quants import _smollm2_weights

gguf = pytest.importorskip("gguf")
ggml_lib = pytest.importorskip("quantsense.backends.llama_cpp.ggml_lib")
_no_ggml = pytest.mark.skipif(not ggml_lib.available(), reason="llama-cpp-python (ggml's library) is not installed")


def needs_ggml(test):
    """A test of ggml's own quantizers: skipped without llama-cpp-python, and slow (it runs llama.cpp's library)."""
    return pytest.mark.slow(_no_ggml(test))


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Linear(8, 4), torch.nn.Linear(4, 3)

    def forward(self, input_ids, attention_mask=None):
        return self.b(torch.relu(self.a(input_ids)))


def test_collect_sums_squared_inputs_per_column_over_real_tokens_only():
    toy = _Toy()
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    imx = collect(toy, {"a": toy.a, "b": toy.b}, [{"input_ids": x, "attention_mask": mask}])
    kept = x[mask.bool()].double()
    assert imx.counts == {"a": 8, "b": 8}
    np.testing.assert_allclose(imx.sums["a"], kept.pow(2).sum(0).numpy(), rtol=1e-6)
    hidden = torch.relu(toy.a(x))[mask.bool()].double()
    np.testing.assert_allclose(imx.sums["b"], hidden.pow(2).sum(0).detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(imx.weights("a"), imx.sums["a"] / 8, rtol=1e-6)
    assert imx.weights("missing") is None


def test_gguf_file_has_llama_cpp_layout_and_reads_back(tmp_path):
    sums = {"m.q": np.arange(1, 9, dtype=np.float32), "m.k": np.full(4, 2.5, dtype=np.float32)}
    names = {"m.q": "blk.0.attn_q.weight", "m.k": "blk.0.attn_k.weight"}
    imx = Imatrix(
        sums,
        {"m.q": 10, "m.k": 10},
        ("wiki.test.raw",),
        512,
        3,
        calibration={"data": "abc", "first_token": 4096, "tokens": 1536},
    )
    path = save(imx, tmp_path / "imatrix.gguf", names)
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == {f"{n}.{kind}" for n in names.values() for kind in ("in_sum2", "counts")}
    assert list(tensors["blk.0.attn_q.weight.in_sum2"].shape) == [8, 1]  # ne: [n_in, n_mat], as llama-imatrix writes
    assert list(tensors["blk.0.attn_q.weight.counts"].shape) == [1, 1]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    assert {"general.type", "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"} <= set(reader.fields)
    back = load(path, names)
    assert back == imx and back.fingerprint == imx.fingerprint
    assert back.datasets == ("wiki.test.raw",) and (back.chunk_size, back.chunk_count) == (512, 3)
    assert back.calibration == imx.calibration and back.counts == imx.counts
    assert back.overlap("abc", 0, 4096) is None and back.overlap("abc", 5000, 100) == (5000, 5100)
    assert back.overlap("another text", 5000, 100) is None


def test_bad_imatrix_files_are_refused_with_the_fix(tmp_path):
    with pytest.raises(QuantsenseError, match="quantsense imatrix"):
        load(tmp_path / "missing.gguf", {"m": "blk.0.attn_q.weight"})
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(QuantsenseError, match="is not a GGUF imatrix file .it does not start with GGUF's magic"):
        load(junk, {"m": "blk.0.attn_q.weight"})
    other = save(
        Imatrix({"x": np.ones(4, np.float32)}, {"x": 1}), tmp_path / "other.gguf", {"x": "blk.9.ffn_up.weight"}
    )
    with pytest.raises(QuantsenseError, match="another model"):
        load(other, {"m": "blk.0.attn_q.weight"})


@pytest.fixture(scope="module")
def down_proj() -> dict[str, torch.Tensor]:
    """blk.0.ffn_down [576, 1536] of the Q4_1 file, and off its grid as the float stand-in's tool dithers it."""
    from tests.backends.llama_cpp.test_ggml_formats import _dither

    weight = _smollm2_weights(("blk.0.ffn_down.weight",))["blk.0.ffn_down.weight"]
    dithered = _dither()("model.layers.0.mlp.down_proj.weight", weight, "q4_1").to(torch.bfloat16).float()
    return {"q41": weight, "float": dithered}


@needs_ggml
@pytest.mark.parametrize("model", ["q41", "float"])
@pytest.mark.parametrize("name", sorted(n for n, t in TYPES.items() if t.uses_imatrix))
def test_bound_formats_are_ggml_weighted_quantization_bit_for_bit(down_proj, model, name):
    weight = down_proj[model]
    rng = np.random.default_rng(1)
    imx = Imatrix({"down": rng.lognormal(0, 1.5, 1536).astype(np.float32)}, {"down": 7})
    plain, bound = parse_format(name), parse_format(name).with_imatrix(imx)
    assert bound != plain and bound.label() == f"{name}+imatrix" and bound.to_dict()["imatrix"] == imx.fingerprint
    ours = bound.quantize_weight(weight, False, "down")
    want = ggml_lib.fake_quantize(name, weight.numpy(), imx.weights("down"))
    assert torch.equal(ours, torch.from_numpy(want))
    if TYPES[
        name
    ].needs_imatrix:  # no weights for this tensor: refused, as llama-quantize refuses it (ggml would abort)
        with pytest.raises(QuantsenseError, match="needs importance-matrix weights for not in the imatrix"):
            bound.check_unit(SimpleNamespace(name="not in the imatrix", shape=tuple(weight.shape), transposed=False))
    else:
        assert torch.equal(bound.quantize_weight(weight, False, "not in the imatrix"), plain.fake_quantize(weight))
    # what the weighting is for: a smaller activation-weighted error than the plain rounding's (off the grid; on the
    # Q4_1 grid q4_1 is exact either way)
    w = torch.from_numpy(imx.weights("down")).double()
    weighted = lambda q: float(((q.double() - weight.double()) ** 2 * w).sum())  # noqa: E731
    unweighted = (
        plain.fake_quantize(weight)
        if not TYPES[name].needs_imatrix
        else torch.from_numpy(ggml_lib.fake_quantize(name, weight.numpy(), np.ones(1536, np.float32)))
    )  # uniform weights
    if model == "float":
        assert weighted(ours) < weighted(unweighted)
    else:
        assert weighted(ours) <= weighted(unweighted)


def test_formats_that_ignore_an_imatrix_stay_themselves_and_plan_files_name_it():
    imx = Imatrix({"m": np.ones(32, np.float32)}, {"m": 1})
    for name in ("q8_0", "f16", "int4"):
        assert parse_format(name).with_imatrix(imx) == parse_format(name)
    plan = Plan.of({"m": parse_format("q4_K").with_imatrix(imx)})
    entry = json.loads(plan.canonical_json())
    assert known(imx.fingerprint) == imx
    fmt = format_from_dict({"format": "q4_K", "imatrix": imx.fingerprint})
    assert fmt == parse_format("q4_K").with_imatrix(imx) and entry != json.loads(
        Plan.of({"m": parse_format("q4_K")}).canonical_json()
    )
    with pytest.raises(QuantsenseError, match="pass --imatrix"):
        format_from_dict({"format": "q4_K", "imatrix": "0000000000000000"})
    with pytest.raises(QuantsenseError, match="does not use an importance matrix"):
        format_from_dict({"format": "q8_0", "imatrix": imx.fingerprint})


@needs_ggml
def test_imatrix_command_then_held_out_sweep_on_smollm2(smollm2, tmp_path, capsys):
    out = tmp_path / "smollm2.imatrix.gguf"
    lm = [
        "--task",
        "wikitext",
        "--model",
        str(smollm2),
        "--data",
        str(WIKI),
        "--context",
        "128",
        "--stride",
        "128",
        "--no-store",
        "--quiet",
    ]
    assert main(["imatrix", *lm, "--max-tokens", "256", "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "211 weight tensors from 256 tokens" in printed and "tokens 0..256" in printed  # 30 blocks x 7, the head
    reader = gguf.GGUFReader(str(out))
    # the tied output head's input is recorded under the tensor it multiplies by, as llama-imatrix --process-output does
    assert {"blk.0.attn_q.weight.in_sum2", "token_embd.weight.in_sum2"} <= {t.name for t in reader.tensors}
    # scoring the tokens it was collected on is refused; the next tokens are held out and run
    code = main(
        [
            "sensitivity",
            *lm,
            "--max-tokens",
            "256",
            "--imatrix",
            str(out),
            "--unit",
            "linear",
            "--blocks",
            "29",
            "--formats",
            "q4_K",
        ]
    )
    assert code == 2 and "--first-token 256" in capsys.readouterr().err
    res = tmp_path / "res"
    code = main(
        [
            "sensitivity",
            *lm,
            "--max-tokens",
            "1024",
            "--first-token",
            "256",
            "--imatrix",
            str(out),
            "--unit",
            "linear",
            "--blocks",
            "29",
            "--formats",
            "q4_K",
            "q4_0",
            "--exhaustive",
            "--out",
            str(res),
        ]
    )
    assert code == 0, capsys.readouterr().err
    results = json.loads((res / "results.json").read_text())
    assert results["workspace"]["imatrix"]["calibration"]["tokens"] == 256
    assert results["workspace"]["data"]["first_token"] == 256
    rows = results["sensitivity"]["rows"]
    assert {r["unit"] for r in rows if r["format"] == "q4_K"} == {
        "model.layers.29.mlp.down_proj"
    }  # 1536-wide rows only
    assert len([r for r in rows if r["format"] == "q4_0"]) == 7
    assert results["sensitivity"]["sweep"]["skipped"] == [
        f"model.layers.29.{n}@q4_K"
        for n in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
        )
    ]
    assert all(0 < r["kl_mean"] < 1 for r in rows)


def test_missing_imatrix_file_exits_2(smollm2, tmp_path, capsys):
    code = main(
        [
            "baseline",
            "--task",
            "wikitext",
            "--model",
            str(smollm2),
            "--data",
            str(WIKI),
            "--max-tokens",
            "128",
            "--context",
            "128",
            "--stride",
            "128",
            "--no-store",
            "--quiet",
            "--imatrix",
            str(tmp_path / "nope.gguf"),
        ]
    )
    assert code == 2 and "quantsense imatrix" in capsys.readouterr().err
