"""The integer grid family (``int2`` .. ``int8``): round-to-nearest, one scale per tensor, per output channel or per
group of input features, symmetric or asymmetric; torchao's grid, exported with torchao."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from quantsense.errors import QuantsenseError
from quantsense.quantization.formats.base import WeightFormat, register_format

GRANULARITIES = ("per_tensor", "per_channel", "per_group")
MIN_BITS, MAX_BITS = 2, 8

if TYPE_CHECKING:
    import torch


@register_format
@dataclass(frozen=True)
class QuantConfig(WeightFormat):
    """Round-to-nearest integer weight quantization.

    bits: 2..8. symmetric: zero point 0 (else an integer zero point per scale).
    granularity: one scale per tensor, per output channel (row of ``nn.Linear.weight``) or per group
    of ``group_size`` consecutive input features within a row.
    """

    bits: int
    symmetric: bool = True
    granularity: str = "per_channel"
    group_size: int | None = None

    family = "int"
    vocabulary = f"bits {MIN_BITS}..{MAX_BITS} (e.g. 4 or int4)"
    export_targets = ("torchao",)
    takes_scheme = True

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise QuantsenseError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {self.bits!r}")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise QuantsenseError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {self.bits}")
        if not isinstance(self.symmetric, bool):
            raise QuantsenseError(f"symmetric must be true or false, got {self.symmetric!r}")
        if self.granularity not in GRANULARITIES:
            raise QuantsenseError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        if self.granularity == "per_group":
            if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size < 1:
                raise QuantsenseError(f"per_group needs a positive integer group_size, got {self.group_size!r}")
        elif self.group_size is not None:
            raise QuantsenseError(f"group_size is only valid with granularity per_group, got {self.granularity}")

    # -- parsing ------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, scheme=None) -> "QuantConfig | None":
        """``4`` or ``int4``: the grid ``scheme`` (default symmetric per-channel) at 4 bits."""
        digits = text[3:] if text.startswith("int") else text
        if digits.isascii() and digits.isdigit():  # '²' is a digit to str.isdigit but not to int()
            return (scheme or QuantConfig(bits=8)).replace(bits=int(digits))
        return None

    @classmethod
    def claims(cls, data: dict) -> bool:
        return "format" not in data

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

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["group_size"] is None:
            del data["group_size"]
        return data

    def replace(self, **changes) -> "QuantConfig":
        data = asdict(self)
        data.update(changes)
        return QuantConfig(**data)

    # -- identity and words -------------------------------------------------------------------
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

    @property
    def nominal_bits(self) -> float:
        """Bits per code, scales not counted (for ordering formats and naming strategies)."""
        return float(self.bits)

    @property
    def code_bits(self) -> int:
        return self.bits

    @classmethod
    def glossary(cls, scheme=None) -> tuple[str, str]:
        return (
            "int8, int4…",
            "N-bit integer weights rounded to nearest, one scale per output channel and symmetric "
            "unless the name says otherwise (-asym: with a zero point; -tensor: one scale per tensor; -gN: one scale "
            "per N input features).",
        )

    def grid_text(self) -> str:
        """The grid in words, bits left out: 'symmetric per-channel', 'asymmetric per-group (groups of 32)'."""
        text = "symmetric" if self.symmetric else "asymmetric"
        grain = self.granularity.replace("_", "-")
        return f"{text} {grain}" + (f" (groups of {self.group_size})" if self.group_size else "")

    # -- numerics and shapes ------------------------------------------------------------------
    def check_shape(self, shape: tuple[int, ...], transposed: bool = False, where: str = "weight") -> None:
        """A per-group grid needs the group size to divide the input features."""
        if self.granularity != "per_group":
            return
        in_features = shape[0] if transposed else shape[-1]
        if in_features % self.group_size:
            raise QuantsenseError(
                f"group size {self.group_size} does not divide the {in_features} input features of {where}; "
                "choose a divisor of every layer's input size (e.g. 32)"
            )

    def check_model(self, units, named: bool) -> None:
        """The grid is one choice for the whole model: every block linear weight must take it."""
        for name in units.linear_units():
            unit = units.get(name)
            try:
                self.check_shape(unit.shape, unit.transposed, where=name)
            except QuantsenseError as exc:
                raise QuantsenseError(
                    f"the integer grid (--group-size, or scheme= in the API): {exc}" if named else str(exc)
                ) from None

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

    @classmethod
    def levels(cls, scheme) -> tuple["QuantConfig", "QuantConfig", "QuantConfig"]:
        base = scheme or QuantConfig(bits=8)
        return base.replace(bits=8), base.replace(bits=6), base.replace(bits=4)
