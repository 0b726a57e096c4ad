"""What a plan costs in storage: each format prices itself (scales and zero points included)."""

from __future__ import annotations

from quantsense.models.units import UnitMap
from quantsense.quantization.formats import Format
from quantsense.quantization.plan import Plan


def storage_bits(shape: tuple[int, ...], fmt: Format | None, transposed: bool = False) -> int:
    """Bits to store one weight in ``fmt``; ``None`` is unquantized fp32."""
    if fmt is None:
        numel = 1
        for dim in shape:
            numel *= dim
        return 32 * numel
    return fmt.storage_bits(tuple(shape), transposed)


def plan_bits(unit_map: UnitMap, plan: Plan, scope: list[str] | None = None) -> tuple[int, int]:
    """(total storage bits, number of weights) over ``scope`` (default: every block linear unit)."""
    formats = plan.as_dict()
    names = scope if scope is not None else unit_map.linear_units()
    total = numel = 0
    for name in names:
        unit = unit_map.get(name)
        total += storage_bits(unit.shape, formats.get(name), unit.transposed)
        numel += unit.numel
    return total, numel


def average_bits(unit_map: UnitMap, plan: Plan, scope: list[str] | None = None) -> float:
    """Average stored bits per weight over the block linear weights (32 for an FP32 weight)."""
    total, numel = plan_bits(unit_map, plan, scope)
    return total / numel


def model_bytes(model, unit_map: UnitMap, plan: Plan, unit_bits=None) -> int:
    """Bytes of the whole model's parameters under ``plan`` (unquantized tensors at their dtype).

    ``unit_bits(unit, fmt)`` prices a quantized unit; the default is the format's own
    ``storage_bits``. Shared weights count once.
    """
    if unit_bits is None:

        def unit_bits(unit, fmt):
            return fmt.unit_storage_bits(unit)

    formats = plan.as_dict()
    quantized = {id(unit_map.get(n).weight): n for n in formats}
    total_bits = 0
    seen = set()
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        name = quantized.get(id(param))
        if name is None:
            total_bits += param.numel() * param.element_size() * 8
        else:
            total_bits += unit_bits(unit_map.get(name), formats[name])
    return total_bits // 8
