"""The PNG size/loss frontier: every measured plan's loss (95% CI, zoomed) and mean KL against bits per weight."""

from __future__ import annotations

import math
from pathlib import Path

from quantsense.errors import QuantsenseError
from quantsense.visualization.colours import plan_style
from quantsense.visualization.labels import KL_LABEL, fmt_num, num, title
from quantsense.visualization.placement import line_kinds, loss_range, place_labels, segment_obstacles
from quantsense.visualization.plot_common import DPI, pyplot, save
from quantsense.visualization.schema import TaskInfo, plan_label, plan_rows

LABEL_PT = 7  # font size of the plan labels


def _plan_points(results: dict, rows: list[dict], task: TaskInfo):
    """(row, x, y, colour, marker, series) for each plan with a finite loss and size."""
    out = []
    for r in rows:
        y = num(r.get(task.loss))
        if math.isfinite(y) and math.isfinite(num(r.get("avg_bits"))):
            out.append((r, num(r["avg_bits"]), y, *plan_style(results, r)))
    return out


def _clamp(y: float, lo: float, hi: float) -> float:
    return min(max(y, lo), hi)


def _draw_point(ax, kl_ax, task: TaskInfo, point, lo: float, hi: float, label) -> None:
    """One plan: a marker with its CI on the loss axis (an edge arrow when off-range), a marker on the KL axis."""
    r, x, y, colour, marker, _ = point
    if y > hi or y < lo:
        ax.plot(
            [x],
            [_clamp(y, lo, hi)],
            marker="^" if y > hi else "v",
            color=colour,
            markersize=9,
            linestyle="none",
            clip_on=False,
            markeredgecolor="black",
            label=label,
        )
    else:
        ylo, yhi = num(r.get(task.ci_low)), num(r.get(task.ci_high))
        yerr = [[max(0.0, y - ylo) if math.isfinite(ylo) else 0.0], [max(0.0, yhi - y) if math.isfinite(yhi) else 0.0]]
        ax.errorbar(
            [x],
            [y],
            yerr=yerr,
            fmt=marker,
            color=colour,
            capsize=3,
            markersize=7,
            markeredgecolor="black",
            markeredgewidth=0.5,
            label=label,
        )
    kl_ax.plot(
        [x],
        [max(num(r.get("kl_mean")), 1e-9)],
        marker=marker,
        color=colour,
        linestyle="none",
        markersize=7,
        markeredgecolor="black",
        markeredgewidth=0.5,
    )


def _draw_lines(ax, kl_ax, results: dict, task: TaskInfo, points, lo: float, hi: float) -> None:
    """Allocated and mixed plans joined in order of size."""
    for line in line_kinds([p[0] for p in points]).values():
        if len(line) > 1:
            colour = plan_style(results, line[0])[0]
            xs = [num(r["avg_bits"]) for r in line]
            ax.plot(xs, [_clamp(num(r[task.loss]), lo, hi) for r in line], "-", color=colour, linewidth=1, alpha=0.6)
            kl_ax.plot(xs, [max(num(r.get("kl_mean")), 1e-9) for r in line], "-", color=colour, linewidth=1, alpha=0.6)


def frontier_plot(results: dict, path: str | Path) -> Path:
    """The task's loss (95% CI, zoomed; far-off plans at the edge with their value) and mean KL against average
    stored bits per weight, for allocated, uniform, hand and mixed plans; labels placed so they do not collide."""
    plt = pyplot()
    task = TaskInfo.from_results(results)
    rows = plan_rows(results)
    points = _plan_points(results, rows, task)
    if not points:
        raise QuantsenseError(
            "these results have no frontier or mixed-precision plans to plot: run `quantsense frontier` first"
        )
    fig, (ax, kl_ax) = plt.subplots(1, 2, figsize=(14, 5.6), dpi=DPI, gridspec_kw={"width_ratios": [3, 2]})
    lo, hi = loss_range(rows, task)
    xs = [p[1] for p in points]
    x_pad = 0.06 * ((max(xs) - min(xs)) or 1.0)
    ax.set_xlim(min(xs) - x_pad, max(xs) + x_pad)
    ax.set_ylim(lo, hi)
    ax.axhline(0, color="#777777", linestyle=":", linewidth=1.2)
    fp32_text = ax.text(ax.get_xlim()[0], 0, " FP32", ha="left", va="bottom", fontsize=8, color="#555555")
    seen = set()
    for point in points:  # one legend entry per series; uniform plans get a plain square each (below)
        series = point[5]
        _draw_point(ax, kl_ax, task, point, lo, hi, None if series in seen or point[0]["kind"] == "uniform" else series)
        seen.add(series)
    _draw_lines(ax, kl_ax, results, task, points, lo, hi)
    for r, _, _, colour, _, series in points:
        if r["kind"] == "uniform":
            ax.plot([], [], marker="s", color=colour, linestyle="none", label=series)
    ax.set_xlabel("average stored bits per weight (scales included)")
    ax.set_ylabel(f"{task.loss_label}, 95% CI")
    ax.grid(alpha=0.3)
    legend = ax.legend(fontsize=7, loc="upper right", ncol=2)
    kl_ax.set_yscale("log")
    kl_ax.set_xlabel("average stored bits per weight")
    kl_ax.set_ylabel(KL_LABEL)
    kl_ax.grid(alpha=0.3, which="both")
    fig.suptitle(title(results, "Size / loss frontier"), fontsize=11)
    fig.tight_layout()
    _label_points(fig, ax, task, points, lo, hi, legend, fp32_text)
    return save(fig, path)


def _point_label(row: dict, y: float, lo: float, hi: float) -> str:
    """A plan's short label; an off-range plan also says its value and which edge it is drawn at."""
    text = plan_label(row)
    return text if lo <= y <= hi else f"{text} ({fmt_num(y)} {'↑' if y > hi else '↓'})"


def _obstacles(fig, ax, task: TaskInfo, points, lo: float, hi: float, artists) -> list[tuple]:
    """Pixel boxes labels must avoid: ``artists`` (legend, texts), error bars, the joining lines, the FP32 line."""
    renderer = fig.canvas.get_renderer()
    boxes = [tuple(a.get_window_extent(renderer).extents) for a in artists]
    for r, x, y, *_ in points:
        ylo, yhi = (_clamp(num(r.get(k)), lo, hi) for k in (task.ci_low, task.ci_high))
        if math.isfinite(ylo) and math.isfinite(yhi) and lo <= y <= hi:
            (bx0, by0), (bx1, by1) = ax.transData.transform((x, ylo)), ax.transData.transform((x, yhi))
            boxes.append((bx0 - 4, min(by0, by1), bx1 + 4, max(by0, by1)))
    for line in line_kinds([p[0] for p in points]).values():
        boxes += segment_obstacles(
            [tuple(ax.transData.transform((num(r["avg_bits"]), _clamp(num(r[task.loss]), lo, hi)))) for r in line]
        )
    frame = ax.get_window_extent()
    zero = ax.transData.transform((0, 0))[1]
    boxes.append((frame.x0, zero - 2, frame.x1, zero + 2))
    return boxes


def _label_points(fig, ax, task: TaskInfo, points, lo: float, hi: float, *artists) -> None:
    """Label every plan point without overlaps: placement in display pixels, drawn as offset annotations."""
    scale = fig.dpi / 72.0
    obstacles = _obstacles(fig, ax, task, points, lo, hi, artists)
    texts = [_point_label(r, y, lo, hi) for r, _, y, *_ in points]
    anchors = [tuple(ax.transData.transform((x, _clamp(y, lo, hi)))) for _, x, y, *_ in points]
    sizes = [(0.6 * LABEL_PT * scale * len(t) + 4, LABEL_PT * scale * 1.4) for t in texts]
    frame = ax.get_window_extent()
    boxes = place_labels(anchors, sizes, (frame.x0, frame.y0, frame.x1, frame.y1), obstacles)
    for (px, py), (x0, y0, x1, y1), text in zip(anchors, boxes, texts):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        far = math.hypot(max(x0 - px, px - x1, 0), max(y0 - py, py - y1, 0)) > 9  # beyond the marker: a leader
        ax.annotate(
            text,
            xy=ax.transData.inverted().transform((px, py)),
            xytext=(cx - px, cy - py),
            textcoords="offset pixels",
            ha="center",
            va="center",
            fontsize=LABEL_PT,
            arrowprops={"arrowstyle": "-", "color": "#999999", "linewidth": 0.6} if far else None,
            annotation_clip=False,
        )
