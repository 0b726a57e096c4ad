"""Where things go on a size/loss figure: the zoomed loss axis, and label boxes that collide with nothing.

Pure geometry in pixels (any y direction), shared by the PNG frontier and the Plotly one.
"""

from __future__ import annotations

import math

from quantsense.visualization.labels import num
from quantsense.visualization.schema import TaskInfo

_DIRECTIONS = [
    (math.cos(a), math.sin(a))
    for a in (math.pi * k / 8 for k in (0, 2, 14, 4, 12, 8, 6, 10, 1, 15, 3, 13, 5, 11, 7, 9))
]
_RADII = (4, 10, 18, 28, 40, 55, 75, 100, 130, 170)


def loss_range(rows: list[dict], task: TaskInfo) -> tuple[float, float]:
    """A y-range that shows the interesting plans: the allocated (else all non-uniform) plans' intervals, zero,
    and any other plan within one more span of those; points outside are drawn at the edge with their value."""

    def triple(r):
        v = num(r.get(task.loss))
        lo, hi = num(r.get(task.ci_low)), num(r.get(task.ci_high))
        return v, (v if math.isnan(lo) else lo), (v if math.isnan(hi) else hi)

    measured = [r for r in rows if math.isfinite(num(r.get(task.loss)))]
    if not measured:
        return -1.0, 1.0
    finite = [triple(r) for r in measured]
    kinds = [r.get("kind") for r in measured]
    core = (
        [t for t, k in zip(finite, kinds) if k == "allocated"]
        or [t for t, k in zip(finite, kinds) if k != "uniform"]
        or finite
    )
    lo = min(0.0, min(t[1] for t in core if math.isfinite(t[1])))
    hi = max(0.0, max(t[2] for t in core if math.isfinite(t[2])))
    span = (hi - lo) or max(abs(hi), 1e-6)
    for _, vlo, vhi in finite:
        if vhi <= hi + span and math.isfinite(vhi):
            hi = max(hi, vhi)
        if vlo >= lo - span and math.isfinite(vlo):
            lo = min(lo, vlo)
    pad = 0.08 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _cost(box, placed, markers, obstacles, bounds) -> float:
    outside = (
        max(0.0, bounds[0] - box[0])
        + max(0.0, box[2] - bounds[2])
        + max(0.0, bounds[1] - box[1])
        + max(0.0, box[3] - bounds[3])
    )
    return (
        1000.0 * sum(_overlap(box, p) for p in placed)
        + 100.0 * sum(_overlap(box, m) for m in markers)
        + 10.0 * sum(_overlap(box, o) for o in obstacles)
        + 1000.0 * outside * (box[3] - box[1])
    )


def _best_box(anchor, size, placed, markers, obstacles, bounds):
    """The first free box around ``anchor`` at growing distances, else the least-overlapping one."""
    (x, y), (w, h) = anchor, size
    best, best_cost = None, math.inf
    for radius in _RADII:
        for dx, dy in _DIRECTIONS:
            cx, cy = x + dx * (radius + w / 2), y + dy * (radius + h / 2)
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            cost = _cost(box, placed, markers, obstacles, bounds)
            if cost < best_cost:
                best, best_cost = box, cost
            if cost == 0:
                return best
    return best


def place_labels(
    anchors: list[tuple[float, float]],
    sizes: list[tuple[float, float]],
    bounds: tuple[float, float, float, float],
    obstacles: list[tuple[float, float, float, float]] = (),
    marker: float = 5.0,
) -> list[tuple[float, float, float, float]]:
    """Greedy placement of one text box per anchor point, in pixels (any y direction).

    Tries positions around each anchor at growing distances and keeps the first that overlaps no placed label,
    no marker and no obstacle (e.g. the FP32 line as a thin box) and stays inside ``bounds`` (x0, y0, x1, y1);
    where none is free it keeps the least-overlapping one. Returns boxes (x0, y0, x1, y1) in anchor order.
    """
    markers = [(x - marker, y - marker, x + marker, y + marker) for x, y in anchors]
    placed: list[tuple[float, float, float, float]] = []
    result: dict[int, tuple] = {}
    for i in sorted(range(len(anchors)), key=lambda i: (anchors[i][0], anchors[i][1])):
        result[i] = _best_box(anchors[i], sizes[i], placed, markers, obstacles, bounds)
        placed.append(result[i])
    return [result[i] for i in range(len(anchors))]


def segment_obstacles(points: list[tuple[float, float]], step: float = 6.0, half: float = 3.0) -> list[tuple]:
    """Small boxes along the polyline through ``points`` (pixels), so labels keep off a plotted line."""
    boxes = []
    for (xa, ya), (xb, yb) in zip(points, points[1:]):
        n = max(1, int(math.hypot(xb - xa, yb - ya) / step))
        for k in range(n + 1):
            x, y = xa + (xb - xa) * k / n, ya + (yb - ya) * k / n
            boxes.append((x - half, y - half, x + half, y + half))
    return boxes


def line_kinds(rows: list[dict]) -> dict[str, list[dict]]:
    """The plans drawn as a connected line (allocated, mixed), each kind sorted by average bits."""
    return {
        kind: sorted((r for r in rows if r.get("kind") == kind), key=lambda r: num(r["avg_bits"]))
        for kind in ("allocated", "mixed")
    }
