"""Sequential evaluation for a sensitivity sweep: each unit scored on a growing prefix of the data's segments
(:mod:`quantsense.engine.segments`), stopped once its interval decides its tier.

A ranking's tiers are the connected groups of overlapping 95 % intervals
(:func:`quantsense.evaluation.statistics.overlap_tiers`). Every unit is first scored on one segment. A unit whose
interval overlaps another unit's goes on to one more segment, and so on up to all of them, where its interval is the
full sweep's; a unit whose interval overlaps no other is alone in its tier and stops (more data would narrow its
interval further). If a unit that went on comes to overlap one that stopped, that one goes on again.
"""

from __future__ import annotations

from typing import Callable

Measure = Callable[[list[str], int], dict[str, dict]]  # labels at a depth (segments) -> each label's metrics row


def sequential_rows(labels: list[str], measure: Measure, max_depth: int, low: str, high: str) -> tuple[dict, dict]:
    """Each label's row and the depth it was measured to: (rows, depth)."""
    rows: dict[str, dict] = {}
    depth: dict[str, int] = {}
    todo = {label: 1 for label in labels}
    while todo:
        for level in sorted(set(todo.values())):
            chosen = [label for label in labels if todo.get(label) == level]
            rows.update(measure(chosen, level))
            depth.update({label: level for label in chosen})
        intervals = {label: (rows[label][low], rows[label][high]) for label in labels}
        todo = {
            label: depth[label] + 1
            for label in labels
            if depth[label] < max_depth and _overlaps_another(label, intervals)
        }
    return rows, depth


def _overlaps_another(label: str, intervals: dict[str, tuple[float, float]]) -> bool:
    lo, hi = intervals[label]
    return any(other != label and lo <= o_hi and o_lo <= hi for other, (o_lo, o_hi) in intervals.items())
