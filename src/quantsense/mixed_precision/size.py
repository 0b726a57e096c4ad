"""What a plan costs in storage, counting scales (fp32) and zero points (8 bit) honestly."""

from __future__ import annotations

from quantsense.config import Plan
from quantsense.models.units import UnitMap
from quantsense.quantization.fake_quant import storage_bits


def plan_bits(unit_map: UnitMap, plan: Plan, scope: list[str] | None = None) -> tuple[int, int]:
    """(total storage bits, number of weights) over ``scope`` (default: every block linear unit)."""
    configs = plan.as_dict()
    names = scope if scope is not None else unit_map.linear_units()
    total = numel = 0
    for name in names:
        unit = unit_map.get(name)
        total += storage_bits(unit.shape, configs.get(name), unit.transposed)
        numel += unit.numel
    return total, numel


def average_bits(unit_map: UnitMap, plan: Plan, scope: list[str] | None = None) -> float:
    """Average stored bits per weight over the block linear weights (32 for an FP32 weight)."""
    total, numel = plan_bits(unit_map, plan, scope)
    return total / numel


def model_bytes(model, unit_map: UnitMap, plan: Plan, unit_bits=None) -> int:
    """Bytes of the whole model's parameters under ``plan`` (unquantized tensors at their dtype).

    ``unit_bits(unit, config)`` prices a quantized unit; the default is the packed
    ``storage_bits`` (codes, fp32 scales, 8-bit zero points). Shared weights count once.
    """
    if unit_bits is None:
        def unit_bits(unit, config):
            return storage_bits(unit.shape, config, unit.transposed)
    configs = plan.as_dict()
    quantized = {id(unit_map.get(n).weight): n for n in configs}
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
            total_bits += unit_bits(unit_map.get(name), configs[name])
    return total_bits // 8
