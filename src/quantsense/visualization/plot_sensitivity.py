"""PNG figures of the sensitivity sweep: per-unit bars (KL and the task's loss) and the KL heatmap."""

from __future__ import annotations

import math
from pathlib import Path

from quantsense.visualization.colours import color_of
from quantsense.visualization.labels import KL_LABEL, fmt_num, num, title, unit_label
from quantsense.visualization.plot_common import DPI, pyplot, save
from quantsense.visualization.schema import TaskInfo
from quantsense.visualization.sensitivity_data import (
    bar_units,
    sensitivity_formats,
    sensitivity_grid,
    sensitivity_of,
    tiers,
    unit_grid,
    view_of,
    view_rows,
)

KL_KEYS = ("kl_mean", "kl_ci_low", "kl_ci_high")
STACK_ABOVE = 12  # more units than this: the two panels are stacked, not side by side
CMAP = "magma_r"


def _bar_axes(plt, units: int, formats: int):
    """(figure, (KL axis, loss axis), stacked): side by side for a few units, stacked for many."""
    if units > STACK_ABOVE:
        width = min(24.0, 4 + 0.5 * units * max(1, formats / 2))
        fig, axes = plt.subplots(2, 1, figsize=(width, 8.5), dpi=DPI)
        return fig, axes, True
    fig, axes = plt.subplots(1, 2, figsize=(max(10.0, 1.6 * units + 4), 4.8), dpi=DPI)
    return fig, axes, False


def _bars(
    ax,
    x,
    chosen: list[dict],
    keys: tuple[str, str, str],
    width: float,
    colour: str,
    label: str,
    stacked: bool,
    log: bool,
):
    """One format's bars with 95% error bars; returns the upper ends (for tier labels)."""
    import numpy as np

    v, lo, hi = (np.array([num(r.get(k)) for r in chosen]) for k in keys)
    if log:
        v, lo, hi = (np.clip(a, 1e-9, None) for a in (v, lo, hi))
    err = np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)]).clip(0)
    ax.bar(
        x,
        v,
        width,
        yerr=err,
        capsize=2 if stacked else 3,
        color=colour,
        label=label,
        error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
    )
    return hi


def _tier_marks(ax, xs, tops, tier_of: list, partial: list[bool], stacked: bool) -> None:
    """The tier above each KL bar, starred when the bar was measured on part of the data (a sequential sweep)."""
    for xi, top, tier, star in zip(xs, tops, tier_of, partial):
        if tier is not None and math.isfinite(top):
            ax.text(
                xi,
                top * 1.15,
                f"{tier}{'*' if star else ''}",
                ha="center",
                va="bottom",
                fontsize=6 if stacked else 8,
                color="#333333",
            )


def sensitivity_bars(results: dict, path: str | Path) -> Path:
    """Per-unit bars per format: mean KL (log, 95% CI, tier above each bar) and the task's loss (95% CI)."""
    plt = pyplot()
    import numpy as np

    task, sens = TaskInfo.from_results(results), sensitivity_of(results)
    view = view_of(sens)
    units, note = bar_units(results, view)
    formats = sensitivity_formats(results)
    rows = {(r["unit"], r["format"]): r for r in view_rows(sens, view)}
    rank = tiers(sens, view)
    fig, (kl_ax, loss_ax), stacked = _bar_axes(plt, len(units), len(formats))
    x = np.arange(len(units))
    width = 0.8 / len(formats)
    for k, fmt in enumerate(formats):
        chosen = [rows.get((u, fmt), {}) for u in units]
        xs = x + (k - (len(formats) - 1) / 2) * width
        tops = _bars(kl_ax, xs, chosen, KL_KEYS, width, color_of(results, fmt), fmt, stacked, log=True)
        _bars(
            loss_ax,
            xs,
            chosen,
            (task.loss, task.ci_low, task.ci_high),
            width,
            color_of(results, fmt),
            fmt,
            stacked,
            log=False,
        )
        _tier_marks(
            kl_ax,
            xs,
            tops,
            [rank.get((u, fmt), (None, None))[1] for u in units],
            [num(r.get("data_pct", 100)) < 100 for r in chosen],
            stacked,
        )
    partial = any(num(r.get("data_pct", 100)) < 100 for r in rows.values())
    kl_ax.set_yscale("log")
    kl_ax.set_ylabel(
        f"{KL_LABEL}\n(95% CI; number above bar = tier" + ("; * = on part of the data" if partial else "") + ")",
        fontsize=9,
    )
    kl_ax.set_ylim(top=kl_ax.get_ylim()[1] * 2.5)
    loss_ax.axhline(0, color="black", linewidth=0.8)
    loss_ax.set_ylabel(f"{task.loss_label}\n(95% CI)", fontsize=9)
    short = {r["unit"]: unit_label(r) for r in sens["rows"]}
    for ax in (kl_ax, loss_ax):
        ax.set_xticks(x, [short[u] for u in units], rotation=90 if len(units) > 8 else 0, fontsize=7 if stacked else 9)
        ax.set_xlim(-0.6, len(units) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    handles, names = kl_ax.get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        title="format",
        fontsize=8,
        title_fontsize=8,
        ncol=len(formats),
        frameon=False,
        loc="upper right",
        bbox_to_anchor=(1.0, 1.0),
    )
    what = f"Per-{sens.get('unit', 'unit')} sensitivity ({view} view)" + (f": {note}" if note else "")
    fig.suptitle(title(results, what), fontsize=11, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.96 if stacked else 0.93))
    return save(fig, path)


def _cell_text(ax, grid, shade, fontsize: float) -> None:
    """Print each cell's value, white on dark cells."""
    import numpy as np

    for (i, j), value in np.ndenumerate(grid):
        if math.isfinite(value):
            ax.text(
                j,
                i,
                fmt_num(value, 2),
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if shade[i, j] > 0.55 else "black",
            )


def _log_shade(grid):
    """log10 of positive values scaled to 0..1 within the grid (NaN where not positive)."""
    import numpy as np

    logs = np.log10(np.where(grid > 0, grid, np.nan))
    lo, hi = np.nanmin(logs), np.nanmax(logs)
    return (logs - lo) / ((hi - lo) or 1.0)


def _grid_panels(plt, results: dict, rows: list[dict], formats: list[str], grid_of):
    """One block x sub-unit panel per format, each on its own log colour scale."""
    import numpy as np
    from matplotlib.colors import LogNorm

    blocks, subs, _ = grid_of
    fig, axes = plt.subplots(
        1,
        len(formats),
        figsize=(1.5 + 1.05 * len(subs) * len(formats), 1.6 + 0.3 * len(blocks)),
        dpi=DPI,
        squeeze=False,
        layout="constrained",
    )
    for ax, fmt in zip(axes[0], formats):
        cells = unit_grid([r for r in rows if r["format"] == fmt])[2]
        grid = np.array([[num(cells.get((b, s), {}).get("kl_mean")) for s in subs] for b in blocks])
        positive = grid[grid > 0]
        norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
        image = ax.imshow(np.where(grid > 0, grid, np.nan), aspect="auto", cmap=CMAP, norm=norm)
        _cell_text(ax, grid, _log_shade(grid), 6 if len(blocks) > 12 else 8)
        ax.set_xticks(range(len(subs)), subs, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(blocks)), [f"block {b}" for b in blocks], fontsize=7)
        ax.set_title(fmt, color=color_of(results, fmt), fontweight="bold")
        fig.colorbar(image, ax=ax, shrink=0.6, pad=0.02).set_label(f"{KL_LABEL} ({fmt})", fontsize=8)
    return fig


def _unit_format_panel(plt, results: dict, rows: list[dict], formats: list[str]):
    """Unit x format, each format's column on its own log scale."""
    import numpy as np

    units = list(dict.fromkeys(r["unit"] for r in rows))
    cell = {(r["unit"], r["format"]): num(r["kl_mean"]) for r in rows}
    grid = np.array([[cell.get((u, f), math.nan) for f in formats] for u in units])
    shade = np.column_stack([_log_shade(grid[:, j]) for j in range(len(formats))])
    fig, ax = plt.subplots(
        figsize=(max(6.0, 3.0 + 1.3 * len(formats)), 1.6 + 0.3 * len(units)), dpi=DPI, layout="constrained"
    )
    ax.imshow(shade, aspect="auto", cmap=CMAP, vmin=0, vmax=1)
    _cell_text(ax, grid, shade, 7 if len(units) > 12 else 9)
    ax.set_xticks(range(len(formats)), formats)
    for tick, fmt in zip(ax.get_xticklabels(), formats):
        tick.set_color(color_of(results, fmt))
        tick.set_fontweight("bold")
    ax.set_yticks(range(len(units)), units, fontsize=7 if len(units) > 12 else 9)
    ax.set_xlabel("colour: log scale within each format, darker = more sensitive", fontsize=8)
    return fig


def sensitivity_heatmap(results: dict, path: str | Path) -> Path:
    """Mean KL with the value in each cell, coloured on a log scale within each format (so the most sensitive units
    of every format stand out): block x sub-unit panels per format for linear units, else unit x format."""
    plt = pyplot()
    sens = sensitivity_of(results)
    view = view_of(sens)
    formats = sensitivity_formats(results)
    rows = view_rows(sens, view)
    grid_of = sensitivity_grid(results, view)
    kl = KL_LABEL.split(",")[0]
    if grid_of is not None:
        fig = _grid_panels(plt, results, rows, formats, grid_of)
        what, width = f"{kl} by block and linear unit ({view} view)", 110
    else:
        fig = _unit_format_panel(plt, results, rows, formats)
        what, width = f"{kl} by {sens.get('unit', 'unit')} and format ({view} view)", 60
    fig.suptitle(title(results, what, width), fontsize=11)
    return save(fig, path)
