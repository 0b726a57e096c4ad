"""Sensitivity sweeps: one plan per (unit, format, view), evaluated by the engine, turned into rows.

Views:
- ``only``: only this unit quantized, everything else FP32 (the reference study's phase 2).
- ``all_but``: every other unit of the same kind quantized, this one FP32. Its loss *relative to all
  quantized* (the ``all`` row) shows how much protecting the unit buys back (compounding).

Each row carries its identity as data: ``unit`` (a display name), ``block`` (index or None), ``sub``
(the name inside the block, for linear units), ``format`` and ``view``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from quantsense.errors import QuantsenseError
from quantsense.models.units import UnitMap
from quantsense.quantization.formats import Format
from quantsense.quantization.plan import Plan
from quantsense.sweeps.candidates import Candidates


@dataclass(frozen=True)
class SweepUnit:
    """What one sweep unit covers: a whole block or one linear module."""

    display: str  # "block 3" or the module path
    names: tuple[str, ...]  # module paths
    block: int | None
    sub: str | None  # name inside the block (linear units), None for whole blocks and extra units


@dataclass(frozen=True)
class SweepEntry:
    label: str  # unique result key, e.g. "only:block3@int4"
    unit: SweepUnit
    format: Format
    view: str
    plan: Plan


def sweep_units(
    unit_map: UnitMap, unit_kind: str, include_extra: bool | tuple[str, ...] = False, blocks: list[int] | None = None
) -> list[SweepUnit]:
    """The units of a sweep at ``unit_kind`` ("block" or "linear"), optionally only inside ``blocks``; ``include_extra``:
    also the units outside the blocks (``True``: every one, with linear units; a tuple: those named, at either kind)."""
    chosen = list(range(unit_map.num_blocks)) if blocks is None else list(dict.fromkeys(blocks))
    for index in chosen:
        unit_map.block_units(index)  # range check with a clear message
    if unit_kind == "block":
        units = [SweepUnit(f"block {i}", tuple(unit_map.block_units(i)), i, None) for i in chosen]
    else:
        units = [
            SweepUnit(name, (name,), i, unit_map.get(name).short_name(unit_map.block_prefix))
            for i in chosen
            for name in unit_map.block_units(i)
        ]
    extra = (
        unit_map.extra_units()
        if include_extra is True and unit_kind != "block"
        else [unit_map.get(name).name for name in include_extra]
        if isinstance(include_extra, tuple)
        else []
    )
    return units + [SweepUnit(name, (name,), None, None) for name in extra]


def build_entries(
    unit_map: UnitMap,
    formats: list[Format] | Candidates,
    unit_kind: str = "block",
    views: tuple[str, ...] = ("only",),
    include_extra: bool | tuple[str, ...] = False,
    blocks: list[int] | None = None,
) -> list[SweepEntry]:
    units = sweep_units(unit_map, unit_kind, include_extra, blocks)
    every = tuple(n for unit in units for n in unit.names)
    candidates = Candidates.resolve(unit_map, formats)
    entries = []
    for fmt in candidates:
        for view in dict.fromkeys(views):
            for unit in units:
                if view == "only" and not candidates.fits(unit.names, fmt):
                    continue  # e.g. q4_K on a 576-wide row: not storable, so not measured (see skipped_pairs)
                chosen = unit.names if view == "only" else tuple(n for n in every if n not in unit.names)
                key = unit.display.replace(" ", "")
                entries.append(
                    SweepEntry(f"{view}:{key}@{fmt.name}", unit, fmt, view, Plan.of({n: fmt for n in chosen}))
                )
        if "all_but" in views:  # the "everything quantized" point the all_but view is read against
            everything = SweepUnit("all", every, None, None)
            entries.append(
                SweepEntry(f"all:{unit_kind}@{fmt.name}", everything, fmt, "all", Plan.of({n: fmt for n in every}))
            )
    return entries


def skipped_pairs(
    unit_map: UnitMap,
    formats: list[Format] | Candidates,
    unit_kind: str,
    include_extra: bool | tuple[str, ...] = False,
    blocks: list[int] | None = None,
) -> list[str]:
    """'unit@format' for every unit a format cannot store, which a sweep leaves out; a format that fits no unit is
    refused (there is nothing to measure)."""
    units = sweep_units(unit_map, unit_kind, include_extra, blocks)
    candidates = Candidates.resolve(unit_map, formats)
    skipped = []
    for fmt in candidates:
        misfits = [u for u in units if not candidates.fits(u.names, fmt)]
        if misfits and len(misfits) == len(units):  # the format's own message for the first weight that does not fit
            raise QuantsenseError(candidates.first_misfit(misfits[0].names, fmt))
        skipped += [f"{u.display}@{fmt.name}" for u in misfits]
    return skipped


def add_recovery(rows: list[dict], loss_key: str) -> None:
    """For ``all_but`` rows: how much KL and loss keeping this unit FP32 buys back from all-quantized."""
    everything = {r["format"]: r for r in rows if r["view"] == "all"}
    for row in rows:
        base = everything.get(row["format"])
        if row["view"] == "all_but" and base is not None:
            row["kl_recovered"] = base["kl_mean"] - row["kl_mean"]
            row["loss_recovered"] = base[loss_key] - row[loss_key]


def weight_error(applier, names: tuple[str, ...], fmt: Format, columns=None) -> float:
    """Relative error ||W - Q(W)||^2 / ||W||^2 of the unit's weights together (summed over its tensors). With
    ``columns`` (module name -> the mean squared input of each input column, e.g. an importance matrix), each column's
    error is weighted by its input's power: E||(W - Q(W)) x||^2 / E||W x||^2 for inputs of that diagonal second
    moment, the output error the quantization causes, which predicts a unit's loss across formats far better (a
    tensor without an entry, e.g. an embedding, is weighted uniformly)."""
    signal = noise = 0.0
    for name in names:
        original = applier.original(name).double()
        error = (original - applier.quantized(name, fmt).double()).pow(2)
        power = original.pow(2)
        weights = (columns or {}).get(name)
        unit = applier.unit_map.get(name)
        inputs = original.shape[0] if unit.transposed else original.shape[-1]
        if weights is not None and len(weights) == inputs and original.dim() == 2:
            weights = torch.as_tensor(weights, dtype=torch.float64)
            weights = weights[:, None] if unit.transposed else weights[None, :]
            error, power = error * weights, power * weights
        noise += float(error.sum())
        signal += float(power.sum())
    return noise / signal


def weight_sqnr_db(applier, names: tuple[str, ...], fmt: Format) -> float:
    """SQNR of the unit's weights together, in dB (inf when quantization changes nothing)."""
    error = weight_error(applier, names, fmt)
    return float("inf") if error == 0 else float(-10 * np.log10(error))


def bits_per_weight(unit_map: UnitMap, names: tuple[str, ...], fmt: Format) -> float:
    """Stored bits per weight of these units in ``fmt``, scales included."""
    total = sum(fmt.storage_bits(unit_map.get(n).shape, unit_map.get(n).transposed) for n in names)
    return total / sum(unit_map.get(n).numel for n in names)


def run_sweep(
    engine, applier, unit_map: UnitMap, entries: list[SweepEntry], compare, loss_key: str, desc: str = "sensitivity"
) -> list[dict]:
    """Evaluate every entry (store first) and return one row of metrics per entry.

    ``compare(reference, quantized)`` gives the task's paired metrics.
    """
    reference = engine.reference()
    results = engine.evaluate_many([(e.label, e.plan) for e in entries], desc=desc)
    rows = [sweep_row(entry, compare(reference, results[entry.label]), applier, unit_map) for entry in entries]
    add_recovery(rows, loss_key)
    return rows


def sweep_row(entry: SweepEntry, metrics: dict, applier, unit_map: UnitMap, data_pct: float = 100.0) -> dict:
    """One sweep row: the entry's identity as data, its paired metrics, and the share of the data they cover."""
    return {
        "unit": entry.unit.display,
        "block": entry.unit.block,
        "sub": entry.unit.sub,
        "format": entry.format.name,
        "bits_per_weight": bits_per_weight(unit_map, entry.unit.names, entry.format),
        "view": entry.view,
        "label": entry.label,
        **metrics,
        "weight_sqnr_db": weight_sqnr_db(applier, entry.unit.names, entry.format),
        "data_pct": data_pct,  # the share of the data (input tokens) the metrics were measured on, in %
    }
