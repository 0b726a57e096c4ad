"""Weight formats: named, first-class schemes that know how to quantize a weight and what it costs.

Two families share one interface (``name``, ``fake_quantize``, ``storage_bits``, ``to_dict``):

- :class:`QuantConfig`: round-to-nearest integer grids, bits 2..8, one scale per tensor, per output
  channel or per group of input features, symmetric or asymmetric (torchao's grid; exported with torchao).
- :class:`GGUFFormat`: llama.cpp's block formats ``q8_0 q5_1 q5_0 q4_1 q4_0`` (blocks of 32 weights along a
  row, fp16 scale and min) and ``f16 bf16``; fake quantization equals the ``gguf`` package's reference
  quantize/dequantize bit for bit (:mod:`quantsense.quantization.gguf_quants`), exported as GGUF.

:func:`parse_format` turns what a user types (``4``, ``int4``, ``q4_0``) into a format;
:func:`format_from_dict` reads a plan file entry (``{"bits": 4}`` or ``{"format": "q4_0"}``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Union

from quantsense.errors import QuantsenseError

GRANULARITIES = ("per_tensor", "per_channel", "per_group")
MIN_BITS, MAX_BITS = 2, 8

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class QuantConfig:
    """Round-to-nearest integer weight quantization.

    bits: 2..8. symmetric: zero point 0 (else an integer zero point per scale).
    granularity: one scale per tensor, per output channel (row of ``nn.Linear.weight``) or per group
    of ``group_size`` consecutive input features within a row.
    """

    bits: int
    symmetric: bool = True
    granularity: str = "per_channel"
    group_size: int | None = None

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise QuantsenseError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {self.bits!r}")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise QuantsenseError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {self.bits}")
        if not isinstance(self.symmetric, bool):
            raise QuantsenseError(f"symmetric must be true or false, got {self.symmetric!r}")
        if self.granularity not in GRANULARITIES:
            raise QuantsenseError(
                f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )
        if self.granularity == "per_group":
            if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size < 1:
                raise QuantsenseError(f"per_group needs a positive integer group_size, got {self.group_size!r}")
        elif self.group_size is not None:
            raise QuantsenseError(f"group_size is only valid with granularity per_group, got {self.granularity}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def name(self) -> str:
        """A short label such as ``int4`` or ``int4-asym-g128``."""
        text = f"int{self.bits}"
        if not self.symmetric:
            text += "-asym"
        if self.granularity == "per_tensor":
            text += "-tensor"
        elif self.granularity == "per_group":
            text += f"-g{self.group_size}"
        return text

    def label(self) -> str:
        return self.name

    @property
    def family(self) -> str:
        return "int"

    @property
    def nominal_bits(self) -> float:
        """Bits per code, scales not counted (for ordering formats and naming strategies)."""
        return float(self.bits)

    def check_shape(self, shape: tuple[int, ...], transposed: bool = False, where: str = "weight") -> None:
        """A per-group grid needs the group size to divide the input features."""
        if self.granularity != "per_group":
            return
        in_features = shape[0] if transposed else shape[-1]
        if in_features % self.group_size:
            raise QuantsenseError(f"group size {self.group_size} does not divide the {in_features} input features of {where}; "
                                  "choose a divisor of every layer's input size (e.g. 32)")

    def fake_quantize(self, weight: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        from quantsense.quantization.fake_quant import fake_quantize

        return fake_quantize(weight, self, transposed=transposed)

    def storage_bits(self, shape: tuple[int, ...], transposed: bool = False) -> int:
        """Codes plus one fp32 scale (and an 8-bit zero point) per scale group."""
        numel = math.prod(shape)
        out_features = shape[1] if transposed else shape[0]
        if self.granularity == "per_tensor":
            n_scales = 1
        elif self.granularity == "per_channel":
            n_scales = out_features
        else:
            n_scales = numel // self.group_size
        return self.bits * numel + (32 + (0 if self.symmetric else 8)) * n_scales

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["group_size"] is None:
            del data["group_size"]
        return data

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "QuantConfig":
        if not isinstance(data, dict):
            raise QuantsenseError(f"{where}: expected an object with 'bits' or 'format', got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QuantsenseError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        if "bits" not in data:
            raise QuantsenseError(f"{where}: missing required key 'bits' (or 'format')")
        try:
            return cls(**data)
        except QuantsenseError as exc:
            raise QuantsenseError(f"{where}: {exc}") from None

    def replace(self, **changes) -> "QuantConfig":
        data = asdict(self)
        data.update(changes)
        return QuantConfig(**data)


@dataclass(frozen=True)
class GGUFFormat:
    """A llama.cpp tensor type: ``q8_0 q5_1 q5_0 q4_1 q4_0 f16 bf16``."""

    format: str

    def __post_init__(self):
        from quantsense.quantization.gguf_quants import GGUF_FORMATS

        if self.format not in GGUF_FORMATS:
            raise QuantsenseError(f"unknown GGUF format {self.format!r}; use one of {', '.join(GGUF_FORMATS)}")

    @property
    def name(self) -> str:
        return self.format

    def label(self) -> str:
        return self.format

    @property
    def family(self) -> str:
        return "gguf"

    @property
    def nominal_bits(self) -> float:
        """Bits per weight with the block scales (llama.cpp's own figure: q4_0 4.5, q8_0 8.5, f16 16)."""
        from quantsense.quantization.gguf_quants import GGUF_FORMATS

        return float(GGUF_FORMATS[self.format])

    def check_shape(self, shape: tuple[int, ...], transposed: bool = False, where: str = "weight") -> None:
        from quantsense.quantization.gguf_quants import block_size

        row = shape[0] if transposed else shape[-1]
        if row % block_size(self.format):
            raise QuantsenseError(f"{self.format} needs rows that are multiples of {block_size(self.format)} weights "
                                  f"(llama.cpp's block size); {where} has rows of {row}: use f16 or an int format for it")

    def fake_quantize(self, weight: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        from quantsense.quantization.gguf_quants import fake_quantize_gguf

        return fake_quantize_gguf(weight, self.format, transposed=transposed)

    def storage_bits(self, shape: tuple[int, ...], transposed: bool = False) -> int:
        from quantsense.quantization.gguf_quants import gguf_storage_bits

        return gguf_storage_bits(tuple(shape), self.format, transposed)

    def to_dict(self) -> dict:
        return {"format": self.format}


Format = Union[QuantConfig, GGUFFormat]


def gguf_format_names() -> tuple[str, ...]:
    from quantsense.quantization.gguf_quants import GGUF_FORMATS

    return tuple(GGUF_FORMATS)


def parse_format(text: str | int, base: QuantConfig | None = None) -> Format:
    """``4`` or ``int4`` -> the integer grid ``base`` at 4 bits; ``q4_0``/``f16``... -> that GGUF format."""
    base = base or QuantConfig(bits=8)
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise QuantsenseError(f"a format is a name or a number of bits (e.g. 'int4', 4, 'q4_0'), got {text!r}")
    value = str(text).strip().lower()
    digits = value[3:] if value.startswith("int") else value
    if digits.isascii() and digits.isdigit():  # '²' is a digit to str.isdigit but not to int()
        return base.replace(bits=int(digits))
    if value in gguf_format_names():
        return GGUFFormat(value)
    raise QuantsenseError(f"unknown format {text!r}; use bits {MIN_BITS}..{MAX_BITS} (e.g. 4 or int4) "
                          f"or a GGUF format ({', '.join(gguf_format_names())})")


def format_from_dict(data, where: str = "config") -> Format:
    """A plan file entry: ``{"format": "q4_0"}`` or ``{"bits": 4, "symmetric": true, ...}``."""
    if isinstance(data, dict) and "format" in data:
        extra = sorted(set(data) - {"format"})
        if extra:
            raise QuantsenseError(f"{where}: unknown key(s) {', '.join(extra)} beside 'format'")
        try:
            return parse_format(data["format"])
        except QuantsenseError as exc:
            raise QuantsenseError(f"{where}: {exc}") from None
    return QuantConfig.from_dict(data, where)
