"""Sensitivity sweeps: one plan per (unit, bit-width, view), evaluated by the engine, turned into rows.

Views:
- ``only``: only this unit quantized, everything else FP32 (the reference study's phase 2).
- ``all_but``: every other unit of the same granularity quantized, this one FP32. Its drop
  *relative to all quantized* shows how much protecting the unit buys back (compounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantsense.config import Plan, QuantConfig
from quantsense.models.units import UnitMap

VIEWS = ("only", "all_but")
UNIT_GRANULARITIES = ("block", "linear")


@dataclass(frozen=True)
class SweepEntry:
    label: str  # unique, used as the result key, e.g. "block3@int4" or "all_but:...@int4"
    unit: str  # display name: "block 3" or a module path
    unit_names: tuple[str, ...]  # the module paths this unit covers
    bits: int
    view: str
    plan: Plan


def sweep_units(unit_map: UnitMap, granularity: str, include_extra: bool = False,
                blocks: list[int] | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """(display name, module paths) per unit at this granularity, optionally only inside ``blocks``."""
    chosen = list(range(unit_map.num_blocks)) if blocks is None else blocks
    for index in chosen:
        unit_map.block_units(index)  # range check with a clear message
    if granularity == "block":
        return [(f"block {i}", tuple(unit_map.block_units(i))) for i in chosen]
    if granularity == "linear":
        units = [(name, (name,)) for i in chosen for name in unit_map.block_units(i)]
        if include_extra:
            units += [(name, (name,)) for name in unit_map.extra_units()]
        return units
    raise ValueError(f"unknown unit granularity {granularity!r}")


def build_entries(unit_map: UnitMap, bits_list: list[int], scheme: QuantConfig, granularity: str = "block",
                  views: tuple[str, ...] = ("only",), include_extra: bool = False,
                  blocks: list[int] | None = None) -> list[SweepEntry]:
    units = sweep_units(unit_map, granularity, include_extra, blocks)
    every = tuple(n for _, names in units for n in names)
    entries = []
    for bits in bits_list:
        config = scheme.replace(bits=bits)
        for view in views:
            for display, names in units:
                chosen = names if view == "only" else tuple(n for n in every if n not in names)
                plan = Plan.of({n: config for n in chosen})
                key = display.replace(" ", "") if granularity == "block" else display
                entries.append(SweepEntry(f"{view}:{key}@{config.label()}", display, names, bits, view, plan))
        if "all_but" in views:  # the "everything quantized" point the all_but view is read against
            entries.append(SweepEntry(f"all:{granularity}@{config.label()}", "all", every, bits, "all",
                                      Plan.of({n: config for n in every})))
    return entries


def add_recovery(rows: list[dict]) -> None:
    """For ``all_but`` rows: how much KL and accuracy keeping this unit FP32 buys back from all-quantized."""
    everything = {r["bits"]: r for r in rows if r["view"] == "all"}
    for row in rows:
        base = everything.get(row["bits"])
        if row["view"] == "all_but" and base is not None:
            row["kl_recovered"] = base["kl_mean"] - row["kl_mean"]
            loss = "drop" if "drop" in row else "delta_nll"
            row[f"{loss}_recovered"] = base[loss] - row[loss]


def weight_error(applier, names: tuple[str, ...], config: QuantConfig) -> float:
    """Relative error ||W - Q(W)||^2 / ||W||^2 of the unit's weights together (summed over its tensors)."""
    signal = noise = 0.0
    for name in names:
        original = applier.original(name).double()
        noise += float((original - applier.quantized(name, config).double()).pow(2).sum())
        signal += float(original.pow(2).sum())
    return noise / signal


def weight_sqnr_db(applier, names: tuple[str, ...], config: QuantConfig) -> float:
    """SQNR of the unit's weights together, in dB (inf when quantization changes nothing)."""
    error = weight_error(applier, names, config)
    return float("inf") if error == 0 else float(-10 * np.log10(error))


def run_sweep(engine, entries: list[SweepEntry], compare, desc: str = "sensitivity") -> list[dict]:
    """Evaluate every entry (store first) and return one row of metrics per entry.

    ``compare(reference, quantized)`` gives the paired metrics of the task.
    """
    reference = engine.reference()
    results = engine.evaluate_many([(e.label, e.plan) for e in entries], desc=desc)
    applier = engine.evaluator.applier
    rows = []
    for entry in entries:
        metrics = compare(reference, results[entry.label])
        config = entry.plan.assignments[0][1] if entry.plan else None
        rows.append({
            "unit": entry.unit,
            "bits": entry.bits,
            "view": entry.view,
            "label": entry.label,
            **metrics,
            "weight_sqnr_db": weight_sqnr_db(applier, entry.unit_names, config) if config else float("inf"),
        })
    add_recovery(rows)
    return rows
