"""llama.cpp's block formats (``q8_0 q5_1 q5_0 q4_1 q4_0``: blocks of 32 weights along a row with an fp16 scale, and
an fp16 minimum for the ``_1`` formats) and ``f16 bf16``; fake quantization equals the ``gguf`` package's reference
quantize/dequantize bit for bit (:mod:`quantsense.backends.llama_cpp.gguf_quants`); exported as GGUF."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quantsense.errors import QuantsenseError
from quantsense.quantization.formats.base import WeightFormat, register_format
from quantsense.backends.llama_cpp.formats.weighted import ImatrixWeighted

if TYPE_CHECKING:
    import torch


def gguf_format_names() -> tuple[str, ...]:
    from quantsense.backends.llama_cpp.gguf_quants import GGUF_FORMATS

    return tuple(GGUF_FORMATS)


@register_format
@dataclass(frozen=True)
class GGUFFormat(ImatrixWeighted, WeightFormat):
    """A llama.cpp tensor type: ``q8_0 q5_1 q5_0 q4_1 q4_0 f16 bf16`` (the q4/q5 ones weighted by ``imatrix`` when one
    is bound: then quantized by ggml's own library, :mod:`.weighted`)."""

    format: str
    imatrix: Any = None  # quantsense.backends.llama_cpp.imatrix.Imatrix

    family = "gguf"
    vocabulary = "a GGUF format (q8_0, q5_1, q5_0, q4_1, q4_0, f16, bf16)"
    export_targets = ("gguf",)

    def __post_init__(self):
        if self.format not in gguf_format_names():
            raise QuantsenseError(f"unknown GGUF format {self.format!r}; use one of {', '.join(gguf_format_names())}")

    @classmethod
    def parse(cls, text: str, scheme=None) -> "GGUFFormat | None":
        return cls(text) if text in gguf_format_names() else None

    @property
    def name(self) -> str:
        return self.format

    @property
    def nominal_bits(self) -> float:
        """Bits per weight with the block scales (llama.cpp's own figure: q4_0 4.5, q8_0 8.5, f16 16)."""
        from quantsense.backends.llama_cpp.gguf_quants import GGUF_FORMATS

        return float(GGUF_FORMATS[self.format])

    @property
    def code_bits(self) -> int:
        from quantsense.backends.llama_cpp.ggml_types import TYPES

        return TYPES[self.format].code_bits

    @property
    def variant(self) -> str:
        return self.format.split("_", 1)[1] if "_" in self.format else self.format

    @classmethod
    def glossary(cls, scheme=None) -> tuple[str, str]:
        from quantsense.backends.llama_cpp.gguf_quants import BLOCK_SIZE

        return (
            "q4_0, q5_1, q8_0…",
            f"GGUF block formats: weights in blocks of {BLOCK_SIZE} sharing one fp16 scale "
            "(_1 also an fp16 minimum); the digit is the bits per weight before scales.",
        )

    def check_shape(self, shape: tuple[int, ...], transposed: bool = False, where: str = "weight") -> None:
        from quantsense.backends.llama_cpp.gguf_quants import block_size

        row = shape[0] if transposed else shape[-1]
        if row % block_size(self.format):
            raise QuantsenseError(
                f"{self.format} needs rows that are multiples of {block_size(self.format)} weights "
                f"(llama.cpp's block size); {where} has rows of {row}: use f16 or an int format for it"
            )

    def fake_quantize(self, weight: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        from quantsense.backends.llama_cpp.gguf_quants import fake_quantize_gguf

        return fake_quantize_gguf(weight, self.format, transposed=transposed)

    def storage_bits(self, shape: tuple[int, ...], transposed: bool = False) -> int:
        from quantsense.backends.llama_cpp.gguf_quants import gguf_storage_bits

        return gguf_storage_bits(tuple(shape), self.format, transposed)

    @classmethod
    def levels(cls, scheme=None) -> tuple["GGUFFormat", "GGUFFormat", "GGUFFormat"]:
        return cls("q8_0"), cls("q5_0"), cls("q4_0")
