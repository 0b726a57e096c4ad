"""ONNX Runtime's CPU formats (``ort-int8``, ``ort-int8-tensor``, ``ort-int4``, ``ort-int4-b32``), simulated as its kernels
compute them and exported as ONNX (:mod:`quantsense.backends.onnxruntime.writer`).

- ``ort-int8``: ``quantize_dynamic``'s int8 ``MatMulInteger``: symmetric int8 weights, one scale per output channel
  (``ort-int8-tensor``: one per tensor, ``quantize_dynamic``'s default), and the linear's *input* quantized at run time
  by ``DynamicQuantizeLinear`` (uint8, one scale per input tensor). On an embedding it is ``quantize_dynamic``'s
  quantized ``Gather``: a uint8 table, one scale per tensor.
- ``ort-int4`` / ``ort-int4-b32``: ``MatMulNBits`` as ``MatMulNBitsQuantizer`` writes it: 4-bit weights in blocks of
  128 (or 32) along the input, a float scale and a 4-bit zero point per block, inputs left in float.

Weights go through ONNX Runtime's own quantizers (:mod:`quantsense.backends.onnxruntime.ort_lib`), so onnxruntime must be
installed (``pip install -e '.[onnx]'``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quantsense.errors import QuantsenseError
from quantsense.quantization.formats.base import WeightFormat, register_format

if TYPE_CHECKING:
    import torch

NAMES = {
    "ort-int8": (8, None, True),
    "ort-int8-tensor": (8, None, False),
    "ort-int4": (4, 128, False),
    "ort-int4-b32": (4, 32, False),
}  # name -> (bits, block along the input, per output channel)


@register_format
@dataclass(frozen=True)
class OrtFormat(WeightFormat):
    """One ONNX Runtime quantized operator's weight (and, for int8, activation) numerics."""

    format: str

    family = "ort"
    vocabulary = "an ONNX Runtime format (ort-int8, ort-int8-tensor, ort-int4, ort-int4-b32)"
    export_targets = ("onnx",)
    needs = ("onnxruntime",)

    def __post_init__(self):
        if self.format not in NAMES:
            raise QuantsenseError(f"unknown ONNX Runtime format {self.format!r}; use one of {', '.join(NAMES)}")

    @classmethod
    def parse(cls, text: str, scheme=None) -> "OrtFormat | None":
        return cls(text) if text in NAMES else None

    @property
    def name(self) -> str:
        return self.format

    @property
    def bits(self) -> int:
        return NAMES[self.format][0]

    @property
    def block(self) -> int | None:
        return NAMES[self.format][1]

    @property
    def per_channel(self) -> bool:
        return NAMES[self.format][2]

    @property
    def nominal_bits(self) -> float:
        """Bits per weight with the scales: 8 (int8, scales per row are negligible), 4 + 36/block (int4)."""
        return 8.0 if self.block is None else 4 + 36 / self.block

    @property
    def code_bits(self) -> int:
        return self.bits

    @property
    def variant(self) -> str:
        return "" if self.format in ("ort-int8", "ort-int4") else self.format.rsplit("-", 1)[1]

    @classmethod
    def glossary(cls, scheme=None) -> tuple[str, str]:
        return (
            "ort-int8, ort-int4…",
            "ONNX Runtime's CPU kernels: ort-int8 is quantize_dynamic's int8 MatMul (int8 weights "
            "per output channel, inputs quantized to uint8 per tensor at run time; -tensor: one weight scale per tensor); "
            "ort-int4 is MatMulNBits (4-bit weights in blocks of 128 inputs, -b32: of 32, each with a scale and zero point).",
        )

    @property
    def quantizes_inputs(self) -> bool:
        return self.bits == 8

    def input_quantizer(self, kind: str = "linear"):
        """ONNX Runtime's ``DynamicQuantizeLinear`` for an int8 MatMul's input; None for MatMulNBits and embeddings."""
        if not self.quantizes_inputs or kind != "linear":
            return None
        from quantsense.backends.onnxruntime.ort_lib import dynamic_quantize_linear

        return dynamic_quantize_linear

    def check_model(self, units, named: bool) -> None:
        from quantsense.backends.onnxruntime import ort_lib

        ort_lib.check_installed()

    def check_shape(self, shape: tuple[int, ...], transposed: bool = False, where: str = "weight") -> None:
        if len(shape) != 2:
            raise QuantsenseError(f"{self.format} quantizes 2-D weights; {where} has shape {tuple(shape)}")
        if transposed:
            raise QuantsenseError(
                f"{where} is a GPT-2 Conv1D ([in, out] weight); the ONNX export maps nn.Linear and nn.Embedding only"
            )

    def check_unit(self, unit) -> None:
        super().check_unit(unit)
        if unit.kind == "head":
            raise QuantsenseError(
                f"{unit.name} is the classifier head: ONNX Runtime's dynamic quantization leaves its Gemm in "
                "FP32, so no ort format stores it; leave it out of the plan"
            )
        if unit.kind == "embedding":
            self._check_table(unit.name)

    def _check_table(self, where: str) -> None:
        if self.bits != 8:
            raise QuantsenseError(
                f"{where}: {self.format} quantizes MatMul weights; plan ort-int8 for an embedding "
                "(quantize_dynamic's quantized Gather)"
            )

    def fake_quantize(self, weight: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        return self.quantize_weight(weight, transposed, None)

    def quantize_weight(
        self, weight: torch.Tensor, transposed: bool, tensor: str | None, kind: str = "linear"
    ) -> torch.Tensor:
        import torch

        from quantsense.backends.onnxruntime import ort_lib

        self.check_shape(tuple(weight.shape), transposed, where=tensor or "weight")
        rows = weight.detach().to(torch.float32).cpu().numpy()
        if kind == "embedding":
            self._check_table(tensor or "an embedding")
            out = ort_lib.uint8_table(rows)
        elif self.bits == 8:
            out = ort_lib.int8_weight(rows, self.per_channel)
        else:
            out = ort_lib.int4_blocks(rows, self.block)
        return torch.from_numpy(out).to(device=weight.device, dtype=weight.dtype).contiguous()

    def storage_bits(self, shape: tuple[int, ...], transposed: bool = False, kind: str = "linear") -> int:
        """Codes plus a float scale and a zero point per scale (an embedding: one of each for the whole table)."""
        self.check_shape(tuple(shape), transposed)
        out_features, in_features = shape
        numel = out_features * in_features
        if self.bits == 8:
            scales = out_features if self.per_channel and kind == "linear" else 1
            return 8 * numel + (32 + 8) * scales
        k_blocks = math.ceil(in_features / self.block)
        return out_features * (4 * k_blocks * self.block + 32 * k_blocks + 8 * math.ceil(k_blocks / 2))

    def unit_storage_bits(self, unit) -> int:
        return self.storage_bits(unit.shape, unit.transposed, unit.kind)

    @classmethod
    def levels(cls, scheme=None) -> tuple["OrtFormat", "OrtFormat", "OrtFormat"]:
        """The reference strategies' high/mid/low: int8, 4-bit blocks of 32, 4-bit blocks of 128."""
        return cls("ort-int8"), cls("ort-int4-b32"), cls("ort-int4")
