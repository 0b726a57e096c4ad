"""llama.cpp's K-quants and IQ4 formats (``q2_K q3_K q4_K q5_K q6_K iq4_nl iq4_xs``), fake-quantized by llama.cpp's
own quantizer and dequantizer in ggml's shared library (:mod:`quantsense.backends.llama_cpp.ggml_lib`, installed with
``llama-cpp-python``); exported as GGUF.

A K type (and ``iq4_xs``) packs super-blocks of 256 weights along a row: a row of 576 (SmolLM2's hidden size) cannot
hold it. llama.cpp then falls back to a 32-weight type (``fallback`` in :mod:`..ggml_types`); quantsense refuses the format for that
weight instead, naming the fallback, so an allocation never counts a type the file would not contain (the fallback
is a candidate of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quantsense.errors import QuantsenseError
from quantsense.quantization.formats.base import WeightFormat, register_format
from quantsense.backends.llama_cpp.formats.weighted import ImatrixWeighted
from quantsense.backends.llama_cpp.ggml_types import TYPES, names

if TYPE_CHECKING:
    import torch

NAMES = names("ggml")
_BY_LOWER = {name.lower(): name for name in NAMES}


@register_format
@dataclass(frozen=True)
class GGMLFormat(ImatrixWeighted, WeightFormat):
    """A llama.cpp K or IQ4 tensor type, quantized by ggml itself (weighted by ``imatrix`` when one is bound)."""

    format: str
    imatrix: Any = None  # quantsense.backends.llama_cpp.imatrix.Imatrix

    family = "ggml"
    vocabulary = (
        "a ggml K/IQ format (q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl, iq4_xs, iq3_s, iq3_xxs, iq2_s, iq2_xs, "
        "iq2_xxs, iq1_m, iq1_s)"
    )
    export_targets = ("gguf",)
    needs = ("llama-cpp-python",)

    def __post_init__(self):
        if self.format not in NAMES:
            raise QuantsenseError(f"unknown ggml format {self.format!r}; use one of {', '.join(NAMES)}")

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
        return TYPES[self.format].bits_per_weight

    @property
    def code_bits(self) -> int:
        return TYPES[self.format].code_bits

    @property
    def variant(self) -> str:
        return self.format.split("_", 1)[1]

    @classmethod
    def glossary(cls, scheme=None) -> tuple[str, str]:
        return (
            "q4_K, iq4_nl…",
            "llama.cpp's K-quants (super-blocks of 256 weights with 6-bit sub-block scales) and "
            "IQ types (non-uniform and lattice grids; iq1/iq2 need an importance matrix), quantized by ggml itself; "
            "the digit is the bits per weight before scales.",
        )

    def check_model(self, units, named: bool) -> None:
        """Refuse before any work when llama.cpp's library is not installed (the message says how to install it), and a
        type whose grid needs an importance matrix when none is bound."""
        from quantsense.backends.llama_cpp import ggml_lib

        ggml_lib.library()
        if TYPES[self.format].needs_imatrix and self.imatrix is None:
            raise QuantsenseError(
                f"{self.format} needs an importance matrix (llama.cpp refuses it without one): pass "
                "--imatrix FILE (quantsense imatrix makes one)"
            )

    def check_unit(self, unit) -> None:
        """Its shape rule, and for a type that needs an importance matrix, an entry for this unit (an imatrix covers the
        block linears, not the token embedding)."""
        super().check_unit(unit)
        if TYPES[self.format].needs_imatrix and self.importance(unit.name) is None:
            raise QuantsenseError(
                f"{self.format} needs importance-matrix weights for {unit.name}, and the imatrix has "
                "none for it (llama.cpp's covers the block linears)"
            )

    def block_size(self) -> int:
        return TYPES[self.format].block

    def check_shape(self, shape: tuple[int, ...], transposed: bool = False, where: str = "weight") -> None:
        if len(shape) != 2:
            raise QuantsenseError(f"{self.format} quantizes 2-D weights; {where} has shape {tuple(shape)}")
        row = shape[0] if transposed else shape[-1]
        if row % self.block_size():
            fallback = TYPES[self.format].fallback
            instead = f" (llama.cpp falls back to {fallback} for such rows: plan {fallback} there)" if fallback else ""
            raise QuantsenseError(
                f"{self.format} needs rows that are multiples of {self.block_size()} weights; "
                f"{where} has rows of {row}{instead}"
            )

    def fake_quantize(self, weight: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        import torch

        from quantsense.backends.llama_cpp import ggml_lib

        self.check_shape(tuple(weight.shape), transposed)
        rows = (weight.detach().t() if transposed else weight.detach()).to(torch.float32).cpu().numpy()
        out = torch.from_numpy(ggml_lib.fake_quantize(self.format, rows))
        out = out.t() if transposed else out
        return out.to(device=weight.device, dtype=weight.dtype).contiguous()

    def storage_bits(self, shape: tuple[int, ...], transposed: bool = False) -> int:
        self.check_shape(tuple(shape), transposed)
        kind = TYPES[self.format]
        return 8 * kind.nbytes * (shape[0] * shape[1] // kind.block)

    @classmethod
    def levels(cls, scheme=None) -> tuple["GGMLFormat", "GGMLFormat", "GGMLFormat"]:
        return cls("q6_K"), cls("q5_K"), cls("q4_K")
