"""GGUF export of ggml's K and IQ4 types, with and without an imatrix: the bytes are ggml's own quantization of the
source tensors, the file records the imatrix as llama-quantize does, and transformers' loader reads it back equal to
the simulation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantsense.cli import main
from quantsense.backends.llama_cpp.gguf_file import IMATRIX_KEYS, predicted_gguf_bytes, write_gguf
from tests.conftest import WIKI

gguf = pytest.importorskip("gguf")
ggml_lib = pytest.importorskip("quantsense.backends.llama_cpp.ggml_lib")
if not ggml_lib.available():
    pytest.skip("llama-cpp-python (ggml's library) is not installed", allow_module_level=True)

PLAN = {
    "blk.0.ffn_down.weight": "q4_k",
    "blk.1.ffn_down.weight": "q6_k",
    "blk.2.attn_q.weight": "iq4_nl",
    "blk.3.ffn_down.weight": "iq4_xs",
    "blk.4.attn_v.weight": "q5_0",
    "blk.5.ffn_down.weight": "q3_k",
}


def _dequantized(reader, name: str) -> np.ndarray:
    tensor = next(t for t in reader.tensors if t.name == name)
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)


def test_k_and_iq_tensors_are_ggml_bytes_with_imatrix_provenance(smollm2, tmp_path):
    source = gguf.GGUFReader(str(smollm2))
    rng = np.random.default_rng(0)
    importance = {
        "blk.0.ffn_down.weight": rng.uniform(0.1, 4, 1536).astype(np.float32),
        "blk.4.attn_v.weight": rng.uniform(0.1, 4, 576).astype(np.float32),
    }
    provenance = {"file": "calib.imatrix.gguf", "dataset": "wiki.train.raw", "entries": 210, "chunks": 8}
    out = write_gguf(
        smollm2, PLAN, tmp_path / "k.gguf", default_type=None, importance=importance, provenance=provenance
    )
    written = gguf.GGUFReader(out["path"])
    tensors = {t.name: t for t in written.tensors}
    for name, qtype in PLAN.items():
        assert tensors[name].tensor_type == gguf.GGMLQuantizationType[qtype.upper()]
        rows = _dequantized(source, name)
        want = ggml_lib.quantize(qtype, rows.reshape(-1, rows.shape[-1]), importance.get(name))
        assert bytes(np.asarray(tensors[name].data).tobytes()) == want, name
    # the weighted tensors differ from the unweighted quantization of the same rows
    rows = _dequantized(source, "blk.0.ffn_down.weight")
    assert bytes(np.asarray(tensors["blk.0.ffn_down.weight"].data).tobytes()) != ggml_lib.quantize("q4_K", rows)
    fields = written.fields
    assert bytes(fields[IMATRIX_KEYS["file"]].parts[-1]).decode() == "calib.imatrix.gguf"
    assert int(fields[IMATRIX_KEYS["entries"]].parts[-1][0]) == 210
    assert out["bytes"] == predicted_gguf_bytes(smollm2, PLAN, default_type=None, provenance=provenance)["file_bytes"]


def test_export_with_imatrix_reads_back_as_simulated(smollm2, tmp_path, capsys):
    """quantsense imatrix on one token range, export of a K/IQ4 plan bound to it, verified on another: transformers'
    GGUF loader gives the simulation's log-probs (gguf's dequantizers read ggml's bytes bit for bit)."""
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
    imatrix = tmp_path / "calib.imatrix.gguf"
    assert main(["imatrix", *lm, "--max-tokens", "256", "--out", str(imatrix)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    plan = tmp_path / "plan.json"
    from quantsense.workspace import open_workspace

    ws = open_workspace(
        str(smollm2),
        data=str(WIKI),
        task="wikitext",
        max_tokens=1024,
        first_token=256,
        context=128,
        stride=128,
        imatrix=str(imatrix),
        quiet=True,
    )
    fingerprint = ws.imatrix.fingerprint
    units = {
        "model.layers.0.mlp.down_proj": {"format": "q4_K", "imatrix": fingerprint},
        "model.layers.1.mlp.down_proj": {"format": "q6_K", "imatrix": fingerprint},
        "model.layers.2.self_attn.q_proj": {"format": "iq4_nl", "imatrix": fingerprint},
        "model.layers.3.self_attn.v_proj": {"format": "q5_0", "imatrix": fingerprint},
        "model.layers.4.mlp.up_proj": {"format": "q8_0"},
    }
    plan.write_text(json.dumps({"units": units}))
    out = tmp_path / "k.gguf"
    code = main(
        [
            "export",
            str(plan),
            "--format",
            "gguf",
            "--out",
            str(out),
            "--imatrix",
            str(imatrix),
            *lm,
            "--max-tokens",
            "1024",
            "--first-token",
            "256",
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "k-report" / "results.json").read_text())["export"]
    assert report["tensor_types"]["q4_k"] == 1 and report["tensor_types"]["iq4_nl"] == 1
    assert report["max_token_logprob_difference"] <= 1e-4
    # scored where it ships: llama.cpp's KL against an F16 file on the same tokens, beside the simulation's
    assert report["llama_cpp_kl_ci_low"] <= report["llama_cpp_kl_mean"] <= report["llama_cpp_kl_ci_high"]
    # llama.cpp also rounds activations to 8 bits in quantized dot products: on top of the simulation, never far below
    assert 0.8 * report["simulated_kl_mean"] < report["llama_cpp_kl_mean"] < 0.05
    assert "llama.cpp mean KL against an F16 file" in capsys.readouterr().out
    written = gguf.GGUFReader(str(out))
    assert bytes(written.fields[IMATRIX_KEYS["file"]].parts[-1]).decode() == str(imatrix)
    # without --imatrix the plan's imatrix is unknown: refused before any work, naming the flag
    code = main(
        [
            "export",
            str(plan),
            "--format",
            "gguf",
            "--out",
            str(tmp_path / "again.gguf"),
            *lm,
            "--max-tokens",
            "1024",
            "--first-token",
            "256",
        ]
    )
    assert code == 2 and "pass --imatrix" in capsys.readouterr().err


def test_llama_model_quantize_with_the_plan_writes_the_same_tensor_bytes(smollm2, tmp_path):
    """The plan as llama-quantize arguments (--pure, a --tensor-type per tensor, the imatrix) run through
    llama_model_quantize itself gives quantsense's GGUF writer's tensor data byte for byte."""
    from quantsense.backends.llama_cpp.llama_quantize import llama_quantize

    rows = {t.name: int(t.shape[0]) for t in gguf.GGUFReader(str(smollm2)).tensors if len(t.shape) >= 2}
    cycle = ["q4_0", "q5_0", "iq4_nl", "q5_1", "q8_0", "q4_1"]
    types = {name: cycle[i % len(cycle)] for i, name in enumerate(sorted(rows))}
    types.update(
        {f"blk.{i}.ffn_down.weight": ("q4_k", "q6_k", "iq4_xs", "q3_k", "q5_k", "q2_k")[i % 6] for i in range(30)}
    )
    rng = np.random.default_rng(2)
    importance = {
        name: rng.uniform(0.05, 5, width).astype(np.float32)
        for name, width in rows.items()
        if name != "token_embd.weight"
    }
    ours = write_gguf(smollm2, types, tmp_path / "ours.gguf", default_type=None, importance=importance)
    theirs = llama_quantize(
        smollm2, tmp_path / "llama.gguf", ftype=2, overrides=types, importance=importance, pure=True, nthread=2
    )
    a = {t.name: t for t in gguf.GGUFReader(ours["path"]).tensors}
    b = {t.name: t for t in gguf.GGUFReader(str(theirs)).tensors}
    assert set(a) == set(b)
    for name in rows:
        assert a[name].tensor_type == b[name].tensor_type, name
        assert np.asarray(a[name].data).tobytes() == np.asarray(b[name].data).tobytes(), name
