"""The reference study's hand-made mixed-precision strategies, derived from a block ranking.

``ranking`` lists block indices from most to least sensitive; ``levels`` are the (high, mid, low)
formats: INT8/INT6/INT4 on the integer grid as in the reference, q8_0/q5_0/q4_0 for GGUF.

- ``aggressive_<mid>_<low>``: the more sensitive half of the blocks at mid, the rest at low.
- ``<high>_selective_<low>``: every block at high, the least sensitive third (at least one) at low.
- ``targeted_single_block``: every block at low except the single most sensitive one, kept at high.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantsense.errors import QuantsenseError
from quantsense.models.units import UnitMap
from quantsense.quantization.formats import Format, QuantConfig, format_levels
from quantsense.quantization.plan import Plan


@dataclass(frozen=True)
class Levels:
    high: Format
    mid: Format
    low: Format

    @classmethod
    def for_family(cls, fmt: Format, scheme: QuantConfig) -> "Levels | None":
        """The reference's three levels in ``fmt``'s family (its entry's ``levels``), None where it defines none."""
        levels = format_levels(fmt, scheme)
        return cls(*levels) if levels is not None else None


def blocks_plan(unit_map: UnitMap, by_block: dict[int, Format]) -> Plan:
    return Plan.of({name: fmt for block, fmt in by_block.items() for name in unit_map.block_units(block)})


def strategy_formats(ranking: list[int], levels: Levels) -> dict[str, dict[int, Format]]:
    """Each strategy's format per block."""
    half = len(ranking) // 2
    robust = set(ranking[-max(1, len(ranking) // 3) :])
    return {
        f"aggressive_{levels.mid.name}_{levels.low.name}": {
            b: (levels.mid if i < half else levels.low) for i, b in enumerate(ranking)
        },
        f"{levels.high.name}_selective_{levels.low.name}": {
            b: (levels.low if b in robust else levels.high) for b in ranking
        },
        "targeted_single_block": {b: (levels.high if i == 0 else levels.low) for i, b in enumerate(ranking)},
    }


def strategy_plans(unit_map: UnitMap, ranking: list[int], levels: Levels) -> dict[str, tuple[Plan, dict[int, str]]]:
    """Every strategy as (plan, format name per block)."""
    return {
        name: (blocks_plan(unit_map, by_block), {b: f.name for b, f in by_block.items()})
        for name, by_block in strategy_formats(ranking, levels).items()
    }


def uniform_plan(unit_map: UnitMap, fmt: Format) -> Plan:
    return blocks_plan(unit_map, {b: fmt for b in range(unit_map.num_blocks)})


def misfit(unit_map: UnitMap, fmt: Format) -> str | None:
    """Why ``fmt`` cannot store every block linear weight (its own message for the first that does not fit), or None."""
    for name in unit_map.linear_units():
        try:
            fmt.check_unit(unit_map.get(name))
        except QuantsenseError as exc:
            return str(exc)
    return None


def strategy_levels(fmt: Format, scheme: QuantConfig, bind, unit_map: UnitMap) -> tuple[Levels | None, str | None]:
    """The reference strategies' (high, mid, low) formats in ``fmt``'s family, each through ``bind`` (a workspace's
    ``format``: its imatrix), when ``fmt`` and each level can store every block linear; else (None, why they are
    skipped)."""
    levels = Levels.for_family(fmt, scheme)
    if levels is None:
        return None, f"{fmt.name}'s family defines no reference strategy levels"
    levels = Levels(*(bind(level) for level in (levels.high, levels.mid, levels.low)))
    for level in dict.fromkeys((fmt, levels.high, levels.mid, levels.low)):
        why = misfit(unit_map, level)
        if why:
            return None, (
                f"their formats ({levels.high.name}, {levels.mid.name}, {levels.low.name}, ranked at {fmt.name}) "
                f"must fit every block: {why}"
            )
    return levels, None


def frontier_levels(
    fmts: list[Format], scheme: QuantConfig, bind, unit_map: UnitMap
) -> tuple[Format | None, Levels | None, str | None]:
    """A frontier's hand strategies: ranked at the candidate with the fewest bits of at least 4 (else the fewest) among
    those whose strategies fit every block; (None, None, why) when none does."""
    why = None
    for fmt in sorted(fmts, key=lambda f: (f.nominal_bits < 4, f.nominal_bits, f.name)):
        levels, reason = strategy_levels(fmt, scheme, bind, unit_map)
        if levels is not None:
            return fmt, levels, None
        why = why or reason
    return None, None, why
