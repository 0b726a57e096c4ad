"""ONNX Runtime formats: the simulation against ONNX Runtime itself, one quantized operator at a time.

Each test builds a one-node ONNX graph (MatMul, or Gather for an embedding), quantizes it with ONNX Runtime's own
tools (``quantize_dynamic``, ``MatMulNBitsQuantizer``) and runs it; quantsense's simulation of the same module, with
the plan applied through :class:`PlanApplier` (weights and, for int8, the input hook), must agree to float rounding,
far closer than the quantization error itself.
"""

import logging

import numpy as np
import pytest
import torch

from quantsense.errors import QuantsenseError
from quantsense.models.units import discover_units
from quantsense.quantization.apply import PlanApplier
from quantsense.backends.onnxruntime.formats import OrtFormat
from quantsense.quantization.formats import parse_format
from quantsense.quantization.plan import Plan

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from quantsense.backends.onnxruntime.ort_lib import int8_kernel_saturates  # noqa: E402

K, N = 384, 1536


class OneLayer(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Sequential(module)])


def _save(nodes, inputs, outputs, initializers, path):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _quantized_linear_graph(linear, fmt, tmp_path):
    """The linear as ONNX (MatMul + Add) quantized by ONNX Runtime's tool for ``fmt``."""
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    fp32, out = tmp_path / "fp32.onnx", tmp_path / f"{fmt.name}.onnx"
    _save(
        [
            helper.make_node("MatMul", ["x", "W"], ["y0"], name="lin/MatMul"),
            helper.make_node("Add", ["y0", "b"], ["y"], name="lin/Add"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, N])],
        [
            numpy_helper.from_array(linear.weight.detach().numpy().T.copy(), "W"),
            numpy_helper.from_array(linear.bias.detach().numpy(), "b"),
        ],
        fp32,
    )
    logging.disable(logging.WARNING)
    try:
        if fmt.bits == 8:
            quantize_dynamic(str(fp32), str(out), per_channel=fmt.per_channel, nodes_to_quantize=["lin/MatMul"])
        else:
            quantizer = MatMulNBitsQuantizer(
                onnx.load(str(fp32)), block_size=fmt.block, is_symmetric=False, nodes_to_include=["lin/MatMul"]
            )
            quantizer.process()
            quantizer.model.save_model_to_file(str(out))
    finally:
        logging.disable(logging.NOTSET)
    return fp32, out


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _integer_matmul(path, x):
    """The int8 graph's output computed exactly and as x86 CPUs without VNNI compute it (vpmaddubsw: adjacent uint8 x
    int8 products summed in saturating int16 pairs), from the graph's own codes and scales."""
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    rows = x.reshape(-1, K).astype(np.float32)
    low, high = min(0.0, float(rows.min())), max(0.0, float(rows.max()))
    scale = np.float32((high - low) / 255)
    zero = int(np.clip(np.round(-low / scale), 0, 255))
    codes = np.clip(np.round(rows / scale) + zero, 0, 255).astype(np.int64)
    weight = inits["W_quantized"].astype(np.int64)
    products = codes[:, :, None] * weight[None, :, :]
    pairs = np.clip(products[:, 0::2] + products[:, 1::2], -32768, 32767).sum(axis=1)
    dequantize = lambda acc: (acc * scale * inits["W_scale"] + inits["b"]).reshape(*x.shape[:-1], N)  # noqa: E731
    return dequantize((codes - zero) @ weight), dequantize(pairs - zero * weight.sum(axis=0))


def _initializer_bytes(path) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


@pytest.mark.parametrize("name", ["ort-int8", "ort-int8-tensor", "ort-int4", "ort-int4-b32"])
def test_a_quantized_linear_computes_what_onnx_runtime_computes(name, tmp_path):
    torch.manual_seed(0)
    linear = torch.nn.Linear(K, N)
    x = torch.randn(3, 21, K) * 2 + 0.5  # off-centre, so the activation zero point is not 128
    fmt = parse_format(name)
    fp32, quantized = _quantized_linear_graph(linear, fmt, tmp_path)
    expected, unquantized = _run(quantized, x.numpy()), _run(fp32, x.numpy())
    units = discover_units(OneLayer(linear))
    with PlanApplier(units).applied(Plan.of({units.linear_units()[0]: fmt})), torch.no_grad():
        simulated = linear(x).numpy()
    if fmt.bits == 8 and int8_kernel_saturates():  # ONNX Runtime here adds products in saturating int16 pairs
        exact, saturated = _integer_matmul(quantized, x.numpy())
        assert np.abs(saturated - expected).max() < 2e-5 * np.abs(expected).max()  # what this CPU's kernel computes
        expected = exact  # the simulation is the exact kernel (VNNI, AMX, ARM)
    error = np.abs(simulated - expected).max()
    quantization_effect = np.abs(unquantized - expected).max()
    assert error < 2e-5 * np.abs(expected).max()  # float rounding only
    assert quantization_effect > 1000 * error  # the test sees quantization: it could not pass on FP32 outputs
    with torch.no_grad():
        assert np.allclose(linear(x).numpy(), unquantized, atol=1e-4)  # the plan is gone after the block
    # the predicted storage is what the quantized graph holds (bias and, for int8, nothing else in float)
    stored = _initializer_bytes(quantized) - linear.bias.numel() * 4
    assert fmt.storage_bits((N, K)) / 8 == pytest.approx(stored, rel=0.002)


def test_an_embedding_in_ort_int8_is_quantize_dynamic_s_gather(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    torch.manual_seed(1)
    table = torch.nn.Embedding(500, 64)
    ids = np.random.default_rng(0).integers(0, 500, size=(2, 30)).astype(np.int64)
    fp32, out = tmp_path / "emb.onnx", tmp_path / "emb-int8.onnx"
    _save(
        [helper.make_node("Gather", ["E", "ids"], ["y"], name="emb/Gather")],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, 64])],
        [numpy_helper.from_array(table.weight.detach().numpy(), "E")],
        fp32,
    )
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(str(fp32), str(out), nodes_to_quantize=["emb/Gather"], op_types_to_quantize=["Gather"])
    finally:
        logging.disable(logging.NOTSET)
    expected = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    units = discover_units(torch.nn.ModuleDict({"emb": table, "layers": torch.nn.ModuleList([torch.nn.Linear(4, 4)])}))
    fmt = OrtFormat("ort-int8")
    with PlanApplier(units).applied(Plan.of({"emb": fmt})), torch.no_grad():
        simulated = table(torch.from_numpy(ids)).numpy()
        assert fmt.input_quantizer("embedding") is None  # a Gather's output is dequantized, nothing quantizes ids
    assert np.abs(simulated - expected).max() < 1e-6
    assert np.abs(simulated - table(torch.from_numpy(ids)).detach().numpy()).max() > 1e-4
    unit = units.get("emb")
    stored = _initializer_bytes(out)
    assert fmt.unit_storage_bits(unit) / 8 == pytest.approx(stored, abs=8)


def test_names_levels_and_refusals():
    assert [parse_format(n).name for n in ("ORT-INT8", "ort-int4-b32")] == ["ort-int8", "ort-int4-b32"]
    assert parse_format("ort-int4").nominal_bits == pytest.approx(4.28125)
    assert [f.name for f in OrtFormat.levels()] == ["ort-int8", "ort-int4-b32", "ort-int4"]
    with pytest.raises(QuantsenseError, match="ort-int8"):
        parse_format("ort-int3")
    with pytest.raises(QuantsenseError, match="plan ort-int8 for an embedding"):
        OrtFormat("ort-int4").quantize_weight(torch.zeros(10, 64), False, "emb", kind="embedding")
    with pytest.raises(QuantsenseError, match="Conv1D"):
        OrtFormat("ort-int8").check_shape((64, 32), transposed=True, where="transformer.h.0.attn.c_attn")


def test_without_onnxruntime_one_line_says_how_to_install(monkeypatch):
    from quantsense.backends.onnxruntime import writer as onnx_writer

    for name in ("onnxruntime", "onnxruntime.quantization", "onnxruntime.capi._pybind_state"):
        monkeypatch.setitem(__import__("sys").modules, name, None)
    with pytest.raises(QuantsenseError, match=r"pip install -c constraints.txt -e '\.\[onnx\]'"):
        OrtFormat("ort-int8").check_model(None, named=True)
    with pytest.raises(QuantsenseError, match=r"-e '\.\[onnx\]'"):
        OrtFormat("ort-int4").fake_quantize(torch.zeros(4, 64))
    with pytest.raises(QuantsenseError, match=r"-e '\.\[onnx\]'"):
        onnx_writer.check_plan(None, Plan())


def test_the_last_block_runs_whole_when_its_inputs_are_quantized_per_tensor(standin_dir, sst2_validation):
    """The last-block shortcut computes the [CLS] position alone; a per-tensor activation scale must see every position."""
    import quantsense as qs

    ws = qs.open_workspace(str(standin_dir), data=str(sst2_validation), limit=64, store=None, quiet=True)
    plan = Plan.of({name: OrtFormat("ort-int8") for name in ws.units.block_units(5)})
    simulated = ws.evaluator.evaluate(plan).logits
    full = np.zeros_like(simulated)
    with ws.applier.applied(plan), torch.no_grad():  # the plain forward pass, every position of every block
        for positions, inputs in ws.evaluator.device_batches():
            full[positions] = ws.model(**inputs).logits.numpy()
    fp32 = ws.reference().logits
    assert np.abs(simulated - full).max() < 1e-5
    assert np.abs(full - fp32).max() > 1e-3  # the plan changes the logits, so the comparison above can fail


def test_classifier_heads_are_refused_by_name():
    from tests.conftest import tiny_model

    units = discover_units(tiny_model("bert"))
    with pytest.raises(QuantsenseError, match="classifier head"):
        OrtFormat("ort-int8").check_unit(units.get("classifier"))
    with pytest.raises(QuantsenseError, match="plan ort-int8 for an embedding"):
        OrtFormat("ort-int4-b32").check_unit(units.get("bert.embeddings.word_embeddings"))
    OrtFormat("ort-int8").check_unit(units.get("bert.embeddings.word_embeddings"))
