"""PNG figures of a results dict, and the helpers the HTML report shares with them.

matplotlib is imported inside the drawing functions only, so importing this module costs nothing at CLI start-up.
Everything about the task (metric, loss, labels) is read from ``results["workspace"]["task"]``.
"""

from __future__ import annotations

import colorsys
import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from quantsense.errors import QuantsenseError

KL_LABEL = "mean KL(FP32 || quantized), nats"
BAR_UNITS_MAX = 40  # more units than this: the bar chart shows the most sensitive ones, the heatmap shows all
DPI = 120

# ---------------------------------------------------------------- task, names, numbers


@dataclass(frozen=True)
class Task:
    """What the study measured, as results.json describes it."""

    name: str
    metric: str
    metric_label: str
    higher_is_better: bool
    loss: str
    loss_label: str
    ci_low: str
    ci_high: str
    differs_test: str
    report_columns: tuple = ()  # (header, explanation, row key or "loss_ci")
    glossary: tuple = ()  # (term, explanation)


def task_of(results: dict) -> Task:
    try:
        t = results["workspace"]["task"]
        return Task(t["name"], t["metric"]["key"], t["metric"]["label"], bool(t["metric"]["higher_is_better"]),
                    t["loss"]["key"], t["loss"]["label"], t["loss"]["ci_low"], t["loss"]["ci_high"], t["differs_test"],
                    tuple(tuple(c) for c in t.get("report_columns", ())), tuple(tuple(g) for g in t.get("glossary", ())))
    except (KeyError, TypeError) as err:
        raise QuantsenseError(f"results have no complete workspace.task (missing {err}): "
                              "re-run the study with this version of quantsense") from None


def _basename(source) -> str:
    return str(source or "?").rstrip("/\\").replace("\\", "/").split("/")[-1] or str(source)


def model_name(results: dict) -> str:
    return _basename(results.get("workspace", {}).get("model", {}).get("source"))


def data_name(results: dict) -> str:
    data = results.get("workspace", {}).get("data", {})
    base, task = _basename(data.get("source")), data.get("task")
    return f"{task} ({base})" if task and task not in base else base


def num(value) -> float:
    """A results.json number as a float: None is NaN, the strings 'inf'/'-inf' are infinities."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fmt_num(value, digits: int = 3) -> str:
    """Compact, human figure: ``digits`` significant digits, scientific below 1e-3."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    v = num(value)
    if math.isnan(v):
        return "—" if not isinstance(value, str) else value
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v == 0:
        return "0"
    if abs(v) < 1e-3 or abs(v) >= 1e6:
        return f"{v:.{max(digits - 1, 0)}e}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(v)))))
    return f"{v:.{decimals}f}"


# ---------------------------------------------------------------- colours


_FAMILY_HUE = {2: 0.78, 3: 0.0, 4: 0.08, 5: 0.33, 6: 0.47, 8: 0.60, 16: 0.66}  # bits -> hue (purple..blue)
_VARIANT_SHADE = {"": (0.62, 0.42), "0": (0.62, 0.42), "1": (0.55, 0.58), "k": (0.75, 0.32), "k_s": (0.60, 0.50),
                  "k_m": (0.75, 0.32), "k_l": (0.80, 0.25)}


def format_bits(name: str) -> int | None:
    """The nominal bit-width of a format name: int4 -> 4, q5_1 -> 5, q4_K_M -> 4, f16/bf16 -> 16, fp32 -> 32."""
    n = name.lower()
    if n in ("fp32", "f32", "float32"):
        return 32
    if n in ("f16", "fp16", "bf16", "float16", "bfloat16"):
        return 16
    m = re.match(r"^(?:int|uint|i|q|iq|fp|nf|mxfp)(\d+)", n)
    return int(m.group(1)) if m else None


def format_color(name: str | None) -> str:
    """One fixed colour per format, the same in every PNG and HTML figure.

    Bit-width picks the hue family (8-bit blue, 6 teal, 5 green, 4 orange, 3 red, 2 purple, 16 slate, FP32 grey),
    the variant picks the shade: int4 and q4_0 share a shade, q4_1 is lighter, q4_K darker. Unknown names get a
    stable hash-picked colour.
    """
    if name is None or str(name).lower() in ("fp32", "f32", "float32", "none"):
        return "#6b6b6b"
    n = str(name).lower()
    bits = format_bits(n)
    if bits == 16:
        return "#5b6f8a" if n in ("f16", "fp16", "float16") else "#8a7b5b"
    if bits is None or bits not in _FAMILY_HUE and bits not in (1, 7):
        h = (zlib.crc32(n.encode()) % 360) / 360.0
        r, g, b = colorsys.hls_to_rgb(h, 0.45, 0.5)
    else:
        hue = _FAMILY_HUE.get(bits, 0.9 if bits == 1 else 0.55)
        variant = n.split("_", 1)[1] if "_" in n else ""
        sat, light = _VARIANT_SHADE.get(variant, (0.5, 0.45))
        if n.startswith("iq"):
            light += 0.08
        r, g, b = colorsys.hls_to_rgb(hue, light, sat)
    return "#{:02x}{:02x}{:02x}".format(round(r * 255), round(g * 255), round(b * 255))


PLAN_STYLE = {"allocated": ("#111111", "o", "allocated (solver)"), "uniform": (None, "s", "uniform"),
              "hand": ("#9a9a9a", "^", "hand strategies"), "mixed": ("#111111", "D", "mixed-precision plans")}


# ---------------------------------------------------------------- sensitivity helpers


def sensitivity_formats(sens: dict) -> list[str]:
    """Formats in the order given, widest first when bit-widths are known."""
    formats = list(sens.get("formats") or dict.fromkeys(r["format"] for r in sens["rows"]))
    return sorted(formats, key=lambda f: -(format_bits(f) or 0))


def view_of(sens: dict) -> str:
    views = sens.get("views") or ["only"]
    return "only" if "only" in views else views[0]


def tiers(sens: dict, view: str) -> dict:
    """(unit, format) -> (rank, tier) from the rankings."""
    out = {}
    for key, ranked in (sens.get("rankings") or {}).items():
        v, _, fmt = key.partition("@")
        if v == view:
            for row in ranked:
                out[(row["unit"], fmt)] = (row.get("rank"), row.get("tier"))
    return out


def bar_units(sens: dict, view: str) -> tuple[list[str], str]:
    """The units the bar chart shows, and a note saying which (all, or the most sensitive at the smallest format)."""
    rows = [r for r in sens["rows"] if r["view"] == view]
    units = list(dict.fromkeys(r["unit"] for r in rows))
    if len(units) <= BAR_UNITS_MAX:
        return units, ""
    smallest = sensitivity_formats(sens)[-1]
    order = sorted((r for r in rows if r["format"] == smallest), key=lambda r: -num(r["kl_mean"]))
    chosen = [r["unit"] for r in order[:BAR_UNITS_MAX]]
    return chosen, f"the {len(chosen)} most sensitive of {len(units)} units at {smallest}, most sensitive first"


def unit_label(row: dict) -> str:
    """A short name for a unit: 'block 3', or '3 · mlp.down_proj' for a linear unit (its block path dropped)."""
    if row.get("block") is not None and row.get("sub"):
        return f"{row['block']} · {row['sub']}"
    return str(row["unit"])


_LINEAR_UNIT = re.compile(r"^(.*?)\.(\d+)\.(.+)$")


def unit_grid(rows: list[dict]):
    """For linear units: (blocks, sub-unit names, {(block, sub): row}); None when the units are not block sub-units."""
    cells = {}
    for r in rows:
        block, sub = r.get("block"), r.get("sub")
        if block is None or sub is None:
            m = _LINEAR_UNIT.match(str(r["unit"]))
            if not m:
                return None
            block, sub = int(m.group(2)), m.group(3)
        cells[(int(block), sub)] = r
    if not cells:
        return None
    blocks = sorted({b for b, _ in cells})
    subs = list(dict.fromkeys(s for _, s in cells))
    return blocks, subs, cells


# ---------------------------------------------------------------- plan helpers


def plan_rows(results: dict) -> list[dict]:
    """Frontier rows (with their kind) and mixed rows (kind 'mixed'), the plans a user could ship."""
    rows = [dict(r) for r in (results.get("frontier") or {}).get("rows", [])]
    rows += [{**r, "kind": r.get("kind", "mixed")} for r in (results.get("mixed") or {}).get("rows", [])]
    return rows


def format_counts(results: dict, plan: str) -> dict[str, int]:
    """How many units each format got in ``plan`` (fp32 for units left unquantized), most used first."""
    frontier = results.get("frontier") or {}
    choice = (frontier.get("choices") or {}).get(plan)
    if choice is not None:
        counts = Counter("fp32" if f is None else str(f) for f in choice.values())
    else:
        units = ((frontier.get("plans") or {}).get(plan) or {}).get("units")
        if not units:
            return {}
        counts = Counter(u.get("format") or (f"int{u['bits']}" if "bits" in u else "fp32") for u in units.values())
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def plan_format(results: dict, row: dict) -> str | None:
    """The single format of a uniform plan (from its choices, else the last word of its name)."""
    counts = format_counts(results, row["plan"])
    if len(counts) == 1:
        return next(iter(counts))
    last = str(row["plan"]).split()[-1]
    return last if format_bits(last) is not None else None


def short_label(results: dict, row: dict) -> str:
    kind, plan = row.get("kind"), str(row["plan"])
    if kind == "uniform":
        return plan_format(results, row) or plan
    if kind == "allocated" and "@" in plan:
        return "@" + plan.split("@", 1)[1].split()[0]
    return plan


def loss_range(rows: list[dict], task: Task) -> tuple[float, float]:
    """A y-range that shows the interesting plans: the allocated (else all non-uniform) plans' intervals, zero,
    and any other plan within one more span of those; points outside are drawn at the edge with their value."""
    def triple(r):
        v = num(r.get(task.loss))
        lo, hi = num(r.get(task.ci_low)), num(r.get(task.ci_high))
        return v, (v if math.isnan(lo) else lo), (v if math.isnan(hi) else hi)

    finite = [triple(r) for r in rows if math.isfinite(num(r.get(task.loss)))]
    if not finite:
        return -1.0, 1.0
    kinds = [r.get("kind") for r in rows if math.isfinite(num(r.get(task.loss)))]
    core = [t for t, k in zip(finite, kinds) if k == "allocated"] or \
           [t for t, k in zip(finite, kinds) if k != "uniform"] or finite
    lo = min(0.0, min(t[1] for t in core if math.isfinite(t[1])))
    hi = max(0.0, max(t[2] for t in core if math.isfinite(t[2])))
    span = (hi - lo) or max(abs(hi), 1e-6)
    for v, vlo, vhi in finite:
        if vhi <= hi + span and math.isfinite(vhi):
            hi = max(hi, vhi)
        if vlo >= lo - span and math.isfinite(vlo):
            lo = min(lo, vlo)
    pad = 0.08 * (hi - lo or 1.0)
    return lo - pad, hi + pad


# ---------------------------------------------------------------- label placement


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(anchors: list[tuple[float, float]], sizes: list[tuple[float, float]],
                 bounds: tuple[float, float, float, float], obstacles: list[tuple[float, float, float, float]] = (),
                 marker: float = 5.0) -> list[tuple[float, float, float, float]]:
    """Greedy placement of one text box per anchor point, in pixels (any y direction).

    Tries positions around each anchor at growing distances and keeps the first that overlaps no placed label,
    no marker and no obstacle (e.g. the FP32 line as a thin box) and stays inside ``bounds`` (x0, y0, x1, y1);
    where none is free it keeps the least-overlapping one. Returns boxes (x0, y0, x1, y1) in anchor order.
    """
    markers = [(x - marker, y - marker, x + marker, y + marker) for x, y in anchors]
    directions = [(math.cos(a), math.sin(a)) for a in
                  (math.pi * k / 8 for k in (0, 2, 14, 4, 12, 8, 6, 10, 1, 15, 3, 13, 5, 11, 7, 9))]
    placed: list[tuple[float, float, float, float]] = []
    order = sorted(range(len(anchors)), key=lambda i: (anchors[i][0], anchors[i][1]))
    result: dict[int, tuple] = {}
    for i in order:
        (x, y), (w, h) = anchors[i], sizes[i]
        best, best_cost = None, math.inf
        for radius in (4, 10, 18, 28, 40, 55, 75, 100, 130, 170):
            for dx, dy in directions:
                cx, cy = x + dx * (radius + w / 2), y + dy * (radius + h / 2)
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                outside = max(0.0, bounds[0] - box[0]) + max(0.0, box[2] - bounds[2]) + \
                    max(0.0, bounds[1] - box[1]) + max(0.0, box[3] - bounds[3])
                cost = 1000.0 * sum(_overlap(box, p) for p in placed) + \
                    100.0 * sum(_overlap(box, m) for m in markers) + \
                    10.0 * sum(_overlap(box, o) for o in obstacles) + 1000.0 * outside * h
                if cost < best_cost:
                    best, best_cost = box, cost
                if cost == 0:
                    break
            if best_cost == 0:
                break
        placed.append(best)
        result[i] = best
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


# ---------------------------------------------------------------- PNG figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    _pyplot().close(fig)
    return path


def _sensitivity(results: dict) -> dict:
    sens = results.get("sensitivity")
    if not sens or not sens.get("rows"):
        raise QuantsenseError("these results have no sensitivity rows: run `quantsense sensitivity` (or `run`) first")
    return sens


def _title(results: dict, what: str, width: int = 110) -> str:
    line = f"{what} — {model_name(results)} on {data_name(results)}"
    return line if len(line) <= width else f"{what}\n{model_name(results)} on {data_name(results)}"


def sensitivity_bars(results: dict, path: str | Path) -> Path:
    """Per-unit bars per format: mean KL (log, 95% CI, tier above each bar) and the task's loss (95% CI)."""
    plt = _pyplot()
    import numpy as np

    task, sens = task_of(results), _sensitivity(results)
    view = view_of(sens)
    units, note = bar_units(sens, view)
    formats = sensitivity_formats(sens)
    rows = {(r["unit"], r["format"]): r for r in sens["rows"] if r["view"] == view}
    rank = tiers(sens, view)
    stacked = len(units) > 12
    width_in = min(24.0, 4 + 0.5 * len(units) * max(1, len(formats) / 2)) if stacked else max(10.0, 1.6 * len(units) + 4)
    fig, axes = plt.subplots(2, 1, figsize=(width_in, 8.5), dpi=DPI) if stacked else \
        plt.subplots(1, 2, figsize=(width_in, 4.8), dpi=DPI)
    x = np.arange(len(units))
    width = 0.8 / len(formats)
    short = {r["unit"]: unit_label(r) for r in sens["rows"]}
    labels = [short[u] for u in units]
    for k, fmt in enumerate(formats):
        chosen = [rows.get((u, fmt), {}) for u in units]
        offset = (k - (len(formats) - 1) / 2) * width
        for ax, (key, lo_key, hi_key) in zip(axes, (("kl_mean", "kl_ci_low", "kl_ci_high"),
                                                    (task.loss, task.ci_low, task.ci_high))):
            v = np.array([num(r.get(key)) for r in chosen])
            lo = np.array([num(r.get(lo_key)) for r in chosen])
            hi = np.array([num(r.get(hi_key)) for r in chosen])
            if key == "kl_mean":
                v, lo, hi = np.clip(v, 1e-9, None), np.clip(lo, 1e-9, None), np.clip(hi, 1e-9, None)
            err = np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)]).clip(0)
            ax.bar(x + offset, v, width, yerr=err, capsize=2 if stacked else 3, color=format_color(fmt),
                   label=fmt, error_kw={"elinewidth": 0.8, "ecolor": "#333333"})
            if key == "kl_mean":
                for xi, top, u in zip(x + offset, hi, units):
                    tier = rank.get((u, fmt), (None, None))[1]
                    if tier is not None and math.isfinite(top):
                        ax.text(xi, top * 1.15, str(tier), ha="center", va="bottom", fontsize=6 if stacked else 8,
                                color="#333333")
    kl_ax, loss_ax = axes
    kl_ax.set_yscale("log")
    kl_ax.set_ylabel(f"{KL_LABEL}\n(95% CI; number above bar = tier)", fontsize=9)
    kl_ax.set_ylim(top=kl_ax.get_ylim()[1] * 2.5)
    loss_ax.axhline(0, color="black", linewidth=0.8)
    loss_ax.set_ylabel(f"{task.loss_label}\n(95% CI)", fontsize=9)
    for ax in axes:
        ax.set_xticks(x, labels, rotation=90 if len(units) > 8 else 0, fontsize=7 if stacked else 9)
        ax.set_xlim(-0.6, len(units) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    handles, names = kl_ax.get_legend_handles_labels()
    fig.legend(handles, names, title="format", fontsize=8, title_fontsize=8, ncol=len(formats), frameon=False,
               loc="upper right", bbox_to_anchor=(1.0, 1.0))
    what = f"Per-{sens.get('unit', 'unit')} sensitivity ({view} view)" + (f": {note}" if note else "")
    fig.suptitle(_title(results, what), fontsize=11, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93 if not stacked else 0.96))
    return _save(fig, path)


def _cell_text(ax, grid, shade, fontsize: float) -> None:
    """Print each cell's value, white on dark cells."""
    import numpy as np

    for (i, j), value in np.ndenumerate(grid):
        if math.isfinite(value):
            ax.text(j, i, fmt_num(value, 2), ha="center", va="center", fontsize=fontsize,
                    color="white" if shade[i, j] > 0.55 else "black")


def _log_shade(grid):
    """log10 of positive values scaled to 0..1 within the grid (NaN where not positive)."""
    import numpy as np

    logs = np.log10(np.where(grid > 0, grid, np.nan))
    lo, hi = np.nanmin(logs), np.nanmax(logs)
    return (logs - lo) / ((hi - lo) or 1.0)


def sensitivity_heatmap(results: dict, path: str | Path) -> Path:
    """Mean KL with the value in each cell, coloured on a log scale within each format (so the most sensitive units
    of every format stand out): block x sub-unit panels per format for linear units, else unit x format."""
    plt = _pyplot()
    import numpy as np
    from matplotlib.colors import LogNorm

    sens = _sensitivity(results)
    view = view_of(sens)
    formats = sensitivity_formats(sens)
    rows = [r for r in sens["rows"] if r["view"] == view]
    cmap = "magma_r"
    grid_of = unit_grid(rows) if sens.get("unit") != "block" else None
    if grid_of is not None:
        blocks, subs, _ = grid_of
        fig, axes = plt.subplots(1, len(formats), figsize=(1.5 + 1.05 * len(subs) * len(formats),
                                                           1.6 + 0.3 * len(blocks)), dpi=DPI, squeeze=False,
                                 layout="constrained")
        for ax, fmt in zip(axes[0], formats):
            cells = unit_grid([r for r in rows if r["format"] == fmt])[2]
            grid = np.array([[num(cells.get((b, s), {}).get("kl_mean")) for s in subs] for b in blocks])
            positive = grid[grid > 0]
            norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
            image = ax.imshow(np.where(grid > 0, grid, np.nan), aspect="auto", cmap=cmap, norm=norm)
            _cell_text(ax, grid, _log_shade(grid), 6 if len(blocks) > 12 else 8)
            ax.set_xticks(range(len(subs)), subs, rotation=35, ha="right", fontsize=8)
            ax.set_yticks(range(len(blocks)), [f"block {b}" for b in blocks], fontsize=7)
            ax.set_title(fmt, color=format_color(fmt), fontweight="bold")
            fig.colorbar(image, ax=ax, shrink=0.6, pad=0.02).set_label(f"{KL_LABEL} ({fmt})", fontsize=8)
        what = f"{KL_LABEL.split(',')[0]} by block and linear unit ({view} view)"
    else:
        units = list(dict.fromkeys(r["unit"] for r in rows))
        cell = {(r["unit"], r["format"]): num(r["kl_mean"]) for r in rows}
        grid = np.array([[cell.get((u, f), math.nan) for f in formats] for u in units])
        shade = np.column_stack([_log_shade(grid[:, j]) for j in range(len(formats))])
        fig, ax = plt.subplots(figsize=(max(6.0, 3.0 + 1.3 * len(formats)), 1.6 + 0.3 * len(units)), dpi=DPI,
                               layout="constrained")
        ax.imshow(shade, aspect="auto", cmap=cmap, vmin=0, vmax=1)
        _cell_text(ax, grid, shade, 7 if len(units) > 12 else 9)
        ax.set_xticks(range(len(formats)), formats)
        for tick, fmt in zip(ax.get_xticklabels(), formats):
            tick.set_color(format_color(fmt))
            tick.set_fontweight("bold")
        ax.set_yticks(range(len(units)), units, fontsize=7 if len(units) > 12 else 9)
        ax.set_xlabel("colour: log scale within each format, darker = more sensitive", fontsize=8)
        what = f"{KL_LABEL.split(',')[0]} by {sens.get('unit', 'unit')} and format ({view} view)"
    fig.suptitle(_title(results, what, 110 if grid_of is not None else 60), fontsize=11)
    return _save(fig, path)


def _plan_points(results: dict, rows: list[dict], task: Task):
    """(row, x, y, colour, marker, series) for each plan with a finite loss, series = legend group."""
    out = []
    for r in rows:
        y = num(r.get(task.loss))
        if not math.isfinite(y) or not math.isfinite(num(r.get("avg_bits"))):
            continue
        kind = r.get("kind", "mixed")
        colour, marker, series = PLAN_STYLE.get(kind, PLAN_STYLE["mixed"])
        if kind == "uniform":
            colour = format_color(plan_format(results, r))
        out.append((r, num(r["avg_bits"]), y, colour, marker, series))
    return out


def frontier_plot(results: dict, path: str | Path) -> Path:
    """The task's loss (95% CI, zoomed; far-off plans at the edge with their value) and mean KL against average
    stored bits per weight, for allocated, uniform, hand and mixed plans; labels placed so they do not collide."""
    plt = _pyplot()

    task = task_of(results)
    rows = plan_rows(results)
    points = _plan_points(results, rows, task)
    if not points:
        raise QuantsenseError("these results have no frontier or mixed-precision plans to plot: "
                              "run `quantsense frontier` first")
    fig, (ax, kl_ax) = plt.subplots(1, 2, figsize=(14, 5.6), dpi=DPI, gridspec_kw={"width_ratios": [3, 2]})
    lo, hi = loss_range(rows, task)
    xs = [p[1] for p in points]
    x_pad = 0.06 * ((max(xs) - min(xs)) or 1.0)
    ax.set_xlim(min(xs) - x_pad, max(xs) + x_pad)
    ax.set_ylim(lo, hi)
    ax.axhline(0, color="#777777", linestyle=":", linewidth=1.2)
    fp32_text = ax.text(ax.get_xlim()[0], 0, " FP32", ha="left", va="bottom", fontsize=8, color="#555555")
    seen = set()
    for r, x, y, colour, marker, series in points:
        clipped = y > hi or y < lo
        shown = min(max(y, lo), hi)
        ylo, yhi = num(r.get(task.ci_low)), num(r.get(task.ci_high))
        label = None if series in seen or r.get("kind") == "uniform" else series
        seen.add(series)
        if clipped:
            ax.plot([x], [shown], marker="^" if y > hi else "v", color=colour, markersize=9, linestyle="none",
                    clip_on=False, markeredgecolor="black", label=label)
        else:
            yerr = [[max(0.0, y - ylo)] if math.isfinite(ylo) else [0.0], [max(0.0, yhi - y)] if math.isfinite(yhi) else [0.0]]
            ax.errorbar([x], [y], yerr=yerr, fmt=marker, color=colour, capsize=3, markersize=7,
                        markeredgecolor="black", markeredgewidth=0.5, label=label)
        kl_ax.plot([x], [max(num(r.get("kl_mean")), 1e-9)], marker=marker, color=colour, linestyle="none",
                   markersize=7, markeredgecolor="black", markeredgewidth=0.5)
    for kind in ("allocated", "mixed"):
        line = sorted((p for p in points if p[0].get("kind", "mixed") == kind), key=lambda p: p[1])
        if len(line) > 1:
            ax.plot([p[1] for p in line], [min(max(p[2], lo), hi) for p in line], "-", color=line[0][3],
                    linewidth=1, alpha=0.6)
            kl_ax.plot([p[1] for p in line], [max(num(p[0].get("kl_mean")), 1e-9) for p in line], "-",
                       color=line[0][3], linewidth=1, alpha=0.6)
    for fmt_row in [p for p in points if p[0].get("kind") == "uniform"]:
        ax.plot([], [], marker="s", color=fmt_row[3], linestyle="none", label=f"uniform {short_label(results, fmt_row[0])}")
    ax.set_xlabel("average stored bits per weight (scales included)")
    ax.set_ylabel(f"{task.loss_label}, 95% CI")
    ax.grid(alpha=0.3)
    legend = ax.legend(fontsize=7, loc="upper right", ncol=2)
    kl_ax.set_yscale("log")
    kl_ax.set_xlabel("average stored bits per weight")
    kl_ax.set_ylabel(KL_LABEL)
    kl_ax.grid(alpha=0.3, which="both")
    fig.suptitle(_title(results, "Size / loss frontier"), fontsize=11)
    fig.tight_layout()
    _label_points(fig, ax, results, points, lo, hi, legend, fp32_text)
    return _save(fig, path)


def _label_points(fig, ax, results: dict, points, lo: float, hi: float, *artists) -> None:
    """Label every plan point without overlaps: placement in display pixels, drawn as offset annotations.
    Error bars, the FP32 line and ``artists`` (legend, texts) are obstacles."""
    renderer_scale = fig.dpi / 72.0
    renderer = fig.canvas.get_renderer()
    obstacles = [tuple(a.get_window_extent(renderer).extents) for a in artists]
    task = task_of(results)
    anchors, sizes, texts = [], [], []
    for r, x, y, *_ in points:
        ylo, yhi = (min(max(num(r.get(k)), lo), hi) for k in (task.ci_low, task.ci_high))
        if math.isfinite(ylo) and math.isfinite(yhi) and lo <= y <= hi:
            (bx0, by0), (bx1, by1) = ax.transData.transform((x, ylo)), ax.transData.transform((x, yhi))
            obstacles.append((bx0 - 4, min(by0, by1), bx1 + 4, max(by0, by1)))
        shown = min(max(y, lo), hi)
        text = short_label(results, r)
        if shown != y:
            text += f" ({fmt_num(y)} {'↑' if y > hi else '↓'})"
        anchors.append(tuple(ax.transData.transform((x, shown))))
        sizes.append((0.6 * 7 * renderer_scale * len(text) + 4, 7 * renderer_scale * 1.4))
        texts.append(text)
    for kind in ("allocated", "mixed"):
        line = sorted((p for p in points if p[0].get("kind", "mixed") == kind), key=lambda p: p[1])
        obstacles += segment_obstacles([tuple(ax.transData.transform((p[1], min(max(p[2], lo), hi)))) for p in line])
    box = ax.get_window_extent()
    zero = ax.transData.transform((0, 0))[1]
    obstacles.append((box.x0, zero - 2, box.x1, zero + 2))
    boxes = place_labels(anchors, sizes, (box.x0, box.y0, box.x1, box.y1), obstacles)
    for (px, py), (x0, y0, x1, y1), text in zip(anchors, boxes, texts):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        far = math.hypot(max(x0 - px, px - x1, 0), max(y0 - py, py - y1, 0)) > 9  # beyond the marker: a leader
        ax.annotate(text, xy=ax.transData.inverted().transform((px, py)), xytext=(cx - px, cy - py),
                    textcoords="offset pixels", ha="center", va="center", fontsize=7,
                    arrowprops={"arrowstyle": "-", "color": "#999999", "linewidth": 0.6} if far else None,
                    annotation_clip=False)
