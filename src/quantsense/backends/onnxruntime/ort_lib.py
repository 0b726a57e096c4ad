"""ONNX Runtime's own quantizers, called from Python, and its dynamic activation quantization in torch.

The simulation of the ``ort`` formats (:mod:`quantsense.backends.onnxruntime.formats`) quantizes weights with the very
functions ONNX Runtime's tools use, so an exported model holds the codes the simulation measured:

- int8 (``quantize_dynamic``): ``onnxruntime.quantization.quant_utils.quantize_data``, symmetric int8
  ([-127, 127], zero point 0) per output channel or per tensor; a ``Gather``'s table (an embedding) as activation
  data: uint8, asymmetric, one scale per tensor.
- int4 (``MatMulNBitsQuantizer``): ``quantize_matmul_4bits`` from ONNX Runtime's C++ library, blocks (32 or 128
  weights) along the input, asymmetric (a scale and a 4-bit zero point per block).

Activations (:func:`dynamic_quantize_linear`) follow the ONNX ``DynamicQuantizeLinear`` operator that
``quantize_dynamic`` inserts before each ``MatMulInteger``: uint8, one scale per tensor (the whole batch),
``scale = (max(0, max x) - min(0, min x)) / 255``, ``zero point = saturate(round(-min / scale))``, round half to even.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from quantsense.errors import QuantsenseError

INSTALL = "ONNX Runtime formats need onnxruntime: pip install -c constraints.txt -e '.[onnx]'"


def _quant_utils():
    try:
        from onnx import TensorProto
        from onnxruntime.quantization import quant_utils
    except ImportError:
        raise QuantsenseError(INSTALL) from None
    return quant_utils, TensorProto


@functools.lru_cache(maxsize=1)
def int8_kernel_saturates() -> bool:
    """Whether this machine's ONNX Runtime computes ``MatMulInteger`` (uint8 x int8) with int16 pair sums that
    saturate: x86 CPUs without VNNI use ``vpmaddubsw``, which adds two adjacent products into a saturating int16, so
    255 * 127 + 255 * 127 comes out 32767 (ONNX Runtime's documented u8s8 caveat). VNNI, AMX and ARM kernels compute
    exactly, as the simulation does. Asked of ONNX Runtime itself, on a one-node graph."""
    import onnxruntime
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])],
        [helper.make_tensor("b", TensorProto.INT8, [2, 1], [127, 127])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return int(session.run(None, {"a": np.array([[255, 255]], dtype=np.uint8)})[0][0, 0]) != 2 * 255 * 127


SATURATION_NOTE = (
    "this CPU's ONNX Runtime int8 kernel saturates int16 pair sums (x86 without VNNI: vpmaddubsw); the "
    "simulation computes exactly, as VNNI, AMX and ARM CPUs do, so outputs here differ by the saturation"
)


def check_installed() -> None:
    """Refuse, naming the install command, when onnxruntime (or onnx) is missing."""
    _quant_utils()


def _dequantized(data: np.ndarray, qtype, symmetric: bool) -> np.ndarray:
    quant_utils, _ = _quant_utils()
    zero_point, scale, codes = quant_utils.quantize_data(data, qtype, symmetric)
    return ((codes.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def int8_weight(rows: np.ndarray, per_channel: bool) -> np.ndarray:
    """A [out, in] weight through ``quantize_dynamic``'s int8 weight quantizer and back (per output channel: one
    scale per row here, the MatMul initializer's column in the ONNX graph)."""
    _, tensor_proto = _quant_utils()
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if not per_channel:
        return _dequantized(rows, tensor_proto.INT8, True)
    return np.stack([_dequantized(row, tensor_proto.INT8, True) for row in rows])


def uint8_table(table: np.ndarray) -> np.ndarray:
    """An embedding table as ``quantize_dynamic`` stores a quantized ``Gather``'s data and reads it back."""
    _, tensor_proto = _quant_utils()
    return _dequantized(np.ascontiguousarray(table, dtype=np.float32), tensor_proto.UINT8, False)


def int4_blocks(rows: np.ndarray, block: int, symmetric: bool = False) -> np.ndarray:
    """A [out, in] weight as ``MatMulNBitsQuantizer`` stores it (``quantize_matmul_4bits``) and read back."""
    packed, scales, zero_points = int4_pack(rows, block, symmetric)
    return int4_unpack(packed, scales, zero_points, rows.shape[1], block, symmetric)


def int4_pack(rows: np.ndarray, block: int, symmetric: bool = False):
    """(packed codes [out, k_blocks, block/2], scales [out, k_blocks], zero points [out, ceil(k_blocks/2)])."""
    try:
        from onnxruntime.capi._pybind_state import quantize_matmul_4bits
    except ImportError:
        raise QuantsenseError(INSTALL) from None
    out_features, in_features = rows.shape
    k_blocks = -(-in_features // block)
    weight = np.zeros((k_blocks * block, out_features), dtype=np.float32)  # the MatMul's B: [in, out], padded
    weight[:in_features] = rows.T
    packed = np.zeros((out_features, k_blocks, block // 2), dtype=np.uint8)
    scales = np.zeros((out_features, k_blocks), dtype=np.float32)
    zero_points = np.zeros((out_features, (k_blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, weight, scales, zero_points, block, out_features, k_blocks * block, symmetric)
    return packed, scales, zero_points


def int4_unpack(packed, scales, zero_points, in_features: int, block: int, symmetric: bool = False) -> np.ndarray:
    """MatMulNBits' dequantization: low nibble first; the zero point is 8 when symmetric."""
    out_features, k_blocks, _ = packed.shape
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(out_features, k_blocks, block).astype(np.float32)
    if symmetric:
        zero = np.full((out_features, k_blocks), 8.0, dtype=np.float32)
    else:
        zero = np.stack([zero_points & 0x0F, zero_points >> 4], axis=-1).reshape(out_features, -1)[:, :k_blocks]
    values = (codes - zero.astype(np.float32)[..., None]) * scales[..., None]
    return values.reshape(out_features, k_blocks * block)[:, :in_features].astype(np.float32)


def dynamic_quantize_linear(x: torch.Tensor) -> torch.Tensor:
    """ONNX ``DynamicQuantizeLinear`` and back: what a ``MatMulInteger`` multiplies instead of ``x``."""
    work = x.detach().float()
    lo = torch.clamp(work.min(), max=0.0)
    hi = torch.clamp(work.max(), min=0.0)
    scale = (hi - lo) / 255.0
    if scale.item() == 0.0:
        return x  # an all-zero input quantizes exactly
    zero_point = torch.clamp(torch.round(-lo / scale), 0, 255)
    codes = torch.clamp(torch.round(work / scale) + zero_point, 0, 255)
    return ((codes - zero_point) * scale).to(x.dtype)
