"""A test-only format family, added as one module: ``toy3``, a 3-bit asymmetric grid per group of 16 input features
with an fp16 scale and an fp16 minimum per group (3 + 32/16 = 5 stored bits per weight). It plugs into the format
registry with ``register_format(Toy3)`` and nothing else."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantsense.errors import QuantsenseError
from quantsense.quantization.formats import WeightFormat

GROUP = 16
LEVELS = 2**3 - 1


@dataclass(frozen=True)
class Toy3(WeightFormat):
    family = "toy"
    vocabulary = "toy3 (a test format)"
    export_targets = ()

    @classmethod
    def parse(cls, text: str, scheme=None) -> "Toy3 | None":
        return cls() if text == "toy3" else None

    @property
    def name(self) -> str:
        return "toy3"

    @property
    def nominal_bits(self) -> float:
        return 3 + 32 / GROUP

    @property
    def code_bits(self) -> int:
        return 3

    @property
    def variant(self) -> str:
        return "toy"

    @classmethod
    def glossary(cls, scheme=None) -> tuple[str, str]:
        return "toy3", f"test format: 3-bit codes per group of {GROUP} weights with an fp16 scale and minimum."

    def check_shape(self, shape, transposed=False, where="weight") -> None:
        row = shape[0] if transposed else shape[-1]
        if row % GROUP:
            raise QuantsenseError(f"toy3 needs rows that are multiples of {GROUP}; {where} has rows of {row}")

    def storage_bits(self, shape, transposed=False) -> int:
        numel = int(torch.Size(shape).numel())
        return 3 * numel + 32 * (numel // GROUP)

    def fake_quantize(self, weight: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        w = (weight.t() if transposed else weight).float()
        groups = w.reshape(-1, GROUP)
        low = groups.min(dim=1, keepdim=True).values.half().float()
        scale = ((groups.max(dim=1, keepdim=True).values - low) / LEVELS).half().float()
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = torch.clamp(torch.round((groups - low) / safe), 0, LEVELS)
        out = (codes * scale + low).reshape(w.shape)
        return (out.t() if transposed else out).to(weight.dtype)
