"""The reference study's hand-made mixed-precision strategies, derived from a block ranking.

``ranking`` lists block indices from most to least sensitive.

- ``aggressive_int6_int4``: the more sensitive half of the blocks at INT6, the rest at INT4.
- ``int8_selective_int4``: every block at INT8, the least sensitive third (at least one) at INT4.
- ``targeted_single_block``: every block at INT4 except the single most sensitive one, kept at INT8.
"""

from __future__ import annotations

from typing import Callable

from quantsense.config import Plan, QuantConfig
from quantsense.models.units import UnitMap


def _blocks_plan(unit_map: UnitMap, bits_by_block: dict[int, int], scheme: QuantConfig) -> Plan:
    mapping = {}
    for block, bits in bits_by_block.items():
        for name in unit_map.block_units(block):
            mapping[name] = scheme.replace(bits=bits)
    return Plan.of(mapping)


def aggressive_int6_int4(ranking: list[int]) -> dict[int, int]:
    half = len(ranking) // 2
    return {b: (6 if i < half else 4) for i, b in enumerate(ranking)}


def int8_selective_int4(ranking: list[int]) -> dict[int, int]:
    count = max(1, len(ranking) // 3)
    robust = set(ranking[-count:])
    return {b: (4 if b in robust else 8) for b in ranking}


def targeted_single_block(ranking: list[int]) -> dict[int, int]:
    return {b: (8 if i == 0 else 4) for i, b in enumerate(ranking)}


STRATEGIES: dict[str, Callable[[list[int]], dict[int, int]]] = {
    "aggressive_int6_int4": aggressive_int6_int4,
    "int8_selective_int4": int8_selective_int4,
    "targeted_single_block": targeted_single_block,
}


def strategy_plans(unit_map: UnitMap, ranking: list[int], scheme: QuantConfig) -> dict[str, tuple[Plan, dict[int, int]]]:
    """Every registered strategy as (plan, bits per block)."""
    out = {}
    for name, make in STRATEGIES.items():
        bits = make(ranking)
        out[name] = (_blocks_plan(unit_map, bits, scheme), bits)
    return out


def uniform_plan(unit_map: UnitMap, bits: int, scheme: QuantConfig) -> Plan:
    return _blocks_plan(unit_map, {b: bits for b in range(unit_map.num_blocks)}, scheme)


def single_block_plan(unit_map: UnitMap, block: int, bits: int, scheme: QuantConfig) -> Plan:
    return _blocks_plan(unit_map, {block: bits}, scheme)
