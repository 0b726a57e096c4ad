"""llama.cpp's K-quants and IQ4 formats (``q2_K q3_K q4_K q5_K q6_K iq4_nl iq4_xs``), fake-quantized by llama.cpp's
own quantizer and dequantizer in ggml's shared library (:mod:`quantsense.quantization.ggml_lib`, installed with
``llama-cpp-python``); exported as GGUF.

A K type (and ``iq4_xs``) packs super-blocks of 256 weights along a row: a row of 576 (SmolLM2's hidden size) cannot
hold it. llama.cpp then falls back to a 32-weight type (:data:`FALLBACK`); quantsense refuses the format for that
weight instead, naming the fallback, so an allocation never counts a type the file would not contain (the fallback
is a candidate of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quantsense.errors import QuantsenseError
from quantsense.quantization.formats.base import WeightFormat, register_format
from quantsense.quantization.formats.weighted import ImatrixWeighted

if TYPE_CHECKING:
    import torch

# name -> (weights per block, bytes per block), as ggml's type traits give them (a test checks them against ggml)
LAYOUT: dict[str, tuple[int, int]] = {
    "q2_K": (256, 84), "q3_K": (256, 110), "q4_K": (256, 144), "q5_K": (256, 176), "q6_K": (256, 210),
    "iq4_nl": (32, 18), "iq4_xs": (256, 136), "iq3_s": (256, 110), "iq3_xxs": (256, 98), "iq2_s": (256, 82),
    "iq2_xs": (256, 74), "iq2_xxs": (256, 66), "iq1_m": (256, 56), "iq1_s": (256, 50),
}
CODE_BITS = {"q2_K": 2, "q3_K": 3, "q4_K": 4, "q5_K": 5, "q6_K": 6, "iq4_nl": 4, "iq4_xs": 4, "iq3_s": 3, "iq3_xxs": 3,
             "iq2_s": 2, "iq2_xs": 2, "iq2_xxs": 2, "iq1_m": 1, "iq1_s": 1}
# llama.cpp's tensor_type_fallback (src/llama-quant.cpp) for a row that is not a multiple of the type's block
FALLBACK = {"q2_K": "q4_0", "q3_K": "q4_0", "q4_K": "q5_0", "q5_K": "q5_1", "q6_K": "q8_0", "iq4_xs": "iq4_nl",
            **{name: "iq4_nl" for name in ("iq3_s", "iq3_xxs", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_m", "iq1_s")}}
# types llama-quantize refuses to write without an importance matrix for the tensor (ggml's grids need the weights)
NEEDS_IMATRIX = frozenset({"iq2_xxs", "iq2_xs", "iq2_s", "iq1_s", "iq1_m"})
# weight type -> the type its activations are rounded to in ggml-cpu's dot products (llama_activations.py)
VEC_DOT = {
    "q4_0": "q8_0", "q5_0": "q8_0", "q8_0": "q8_0", "iq4_nl": "q8_0", "q4_1": "q8_1", "q5_1": "q8_1",
    "q2_K": "q8_K", "q3_K": "q8_K", "q4_K": "q8_K", "q5_K": "q8_K", "q6_K": "q8_K", "iq4_xs": "q8_K",
    "iq3_s": "q8_K", "iq3_xxs": "q8_K", "iq2_s": "q8_K", "iq2_xs": "q8_K", "iq2_xxs": "q8_K", "iq1_s": "q8_K",
    "iq1_m": "q8_K", "f16": "f16", "bf16": "bf16",
}
# the default candidates of `quantsense quantize`: every type a llama.cpp CPU build multiplies fast that holds a
# 576-wide row or falls back to one, from 2.6 to 8.5 bits per weight
ALLOCATION_CANDIDATES = ("q2_K", "q3_K", "q4_0", "iq4_xs", "iq4_nl", "q4_K", "q5_0", "q5_1", "q5_K", "q6_K", "q8_0")
_BY_LOWER = {name.lower(): name for name in LAYOUT}


@register_format
@dataclass(frozen=True)
class GGMLFormat(ImatrixWeighted, WeightFormat):
    """A llama.cpp K or IQ4 tensor type, quantized by ggml itself (weighted by ``imatrix`` when one is bound)."""

    format: str
    imatrix: Any = None  # quantsense.quantization.imatrix.Imatrix

    family = "ggml"
    vocabulary = "a ggml K/IQ format (q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl, iq4_xs, iq3_s, iq3_xxs, iq2_s, iq2_xs, " \
                 "iq2_xxs, iq1_m, iq1_s)"
    export_targets = ("gguf",)
    needs = ("llama-cpp-python",)

    def __post_init__(self):
        if self.format not in LAYOUT:
            raise QuantsenseError(f"unknown ggml format {self.format!r}; use one of {', '.join(LAYOUT)}")

    @classmethod
    def parse(cls, text: str, scheme=None) -> "GGMLFormat | None":
        name = _BY_LOWER.get(text.lower())
        return cls(name) if name else None

    @property
    def name(self) -> str:
        return self.format

    @property
    def nominal_bits(self) -> float:
        """Bits per weight with the block scales (q4_K 4.5, q6_K 6.5625, iq4_xs 4.25)."""
        block, nbytes = LAYOUT[self.format]
        return 8 * nbytes / block

    @property
    def code_bits(self) -> int:
        return CODE_BITS[self.format]

    @property
    def variant(self) -> str:
        return self.format.split("_", 1)[1]

    @classmethod
    def glossary(cls, scheme=None) -> tuple[str, str]:
        return ("q4_K, iq4_nl…", "llama.cpp's K-quants (super-blocks of 256 weights with 6-bit sub-block scales) and "
                "IQ types (non-uniform and lattice grids; iq1/iq2 need an importance matrix), quantized by ggml itself; "
                "the digit is the bits per weight before scales.")

    def check_model(self, units, named: bool) -> None:
        """Refuse before any work when llama.cpp's library is not installed (the message says how to install it), and a
        type whose grid needs an importance matrix when none is bound."""
        from quantsense.quantization import ggml_lib

        ggml_lib.library()
        if self.format in NEEDS_IMATRIX and self.imatrix is None:
            raise QuantsenseError(f"{self.format} needs an importance matrix (llama.cpp refuses it without one): pass "
                                  "--imatrix FILE (quantsense imatrix makes one)")

    def check_unit(self, unit) -> None:
        """Its shape rule, and for a type that needs an importance matrix, an entry for this unit (an imatrix covers the
        block linears, not the token embedding)."""
        super().check_unit(unit)
        if self.format in NEEDS_IMATRIX and self.importance(unit.name) is None:
            raise QuantsenseError(f"{self.format} needs importance-matrix weights for {unit.name}, and the imatrix has "
                                  "none for it (llama.cpp's covers the block linears)")

    def block_size(self) -> int:
        return LAYOUT[self.format][0]

    def check_shape(self, shape: tuple[int, ...], transposed: bool = False, where: str = "weight") -> None:
        if len(shape) != 2:
            raise QuantsenseError(f"{self.format} quantizes 2-D weights; {where} has shape {tuple(shape)}")
        row = shape[0] if transposed else shape[-1]
        if row % self.block_size():
            fallback = FALLBACK.get(self.format)
            instead = f" (llama.cpp falls back to {fallback} for such rows: plan {fallback} there)" if fallback else ""
            raise QuantsenseError(f"{self.format} needs rows that are multiples of {self.block_size()} weights; "
                                  f"{where} has rows of {row}{instead}")

    def fake_quantize(self, weight: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        import torch

        from quantsense.quantization import ggml_lib

        self.check_shape(tuple(weight.shape), transposed)
        rows = (weight.detach().t() if transposed else weight.detach()).to(torch.float32).cpu().numpy()
        out = torch.from_numpy(ggml_lib.fake_quantize(self.format, rows))
        out = out.t() if transposed else out
        return out.to(device=weight.device, dtype=weight.dtype).contiguous()

    def storage_bits(self, shape: tuple[int, ...], transposed: bool = False) -> int:
        self.check_shape(tuple(shape), transposed)
        block, nbytes = LAYOUT[self.format]
        return 8 * nbytes * (shape[0] * shape[1] // block)

    @classmethod
    def levels(cls, scheme=None) -> tuple["GGMLFormat", "GGMLFormat", "GGMLFormat"]:
        return cls("q6_K"), cls("q5_K"), cls("q4_K")
