"""The report's interactive figures as Plotly JSON (data and layout), built without importing Plotly."""

from __future__ import annotations

import math

from quantsense.visualization.colours import color_of, plan_style
from quantsense.visualization.labels import ci_text, finite, fmt_num, num, unit_label
from quantsense.visualization.placement import line_kinds, loss_range, place_labels, segment_obstacles
from quantsense.visualization.report_tables import counts_text
from quantsense.visualization.report_text import esc, hover_html, plan_figures
from quantsense.visualization.schema import TaskInfo, plan_label, plan_rows
from quantsense.visualization.sensitivity_data import (
    bar_units,
    sensitivity_formats,
    sensitivity_grid,
    tiers,
    unit_grid,
    view_rows,
)

SHADES = [
    [0.0, "#fcfdbf"],
    [0.25, "#feb078"],
    [0.5, "#f1605d"],
    [0.75, "#9e2f7f"],
    [1.0, "#2d1160"],
]  # magma, light->dark
FRONTIER_PLOT_PX = (620.0, 400.0)  # nominal plot-area size the frontier labels are placed for
SYMBOL = {"o": "circle", "s": "square", "^": "triangle-up", "D": "diamond", "P": "cross", "X": "x"}


def _error_y(rows: list[dict], values: list[float], lo: str, hi: str, colour: str, thickness: float) -> dict:
    return {
        "type": "data",
        "symmetric": False,
        "color": colour,
        "thickness": thickness,
        "array": [max(0.0, num(r.get(hi)) - v) for r, v in zip(rows, values)],
        "arrayminus": [max(0.0, v - num(r.get(lo))) for r, v in zip(rows, values)],
    }


# ---------------------------------------------------------------- sensitivity


def _bar_traces(fmt: str, colour: str, xs: list[str], chosen: list[dict], hover: list[str], task: TaskInfo) -> list:
    """One format's KL bars (upper panel) and loss bars (lower panel)."""
    traces = []
    for axis, key, lo, hi in (("2", "kl_mean", "kl_ci_low", "kl_ci_high"), ("", task.loss, task.ci_low, task.ci_high)):
        v = [num(r.get(key)) for r in chosen]
        traces.append(
            {
                "type": "bar",
                "name": fmt,
                "legendgroup": fmt,
                "showlegend": axis == "2",
                "x": xs,
                "y": v,
                "xaxis": f"x{axis}",
                "yaxis": f"y{axis}",
                "marker": {"color": colour},
                "error_y": _error_y(chosen, v, lo, hi, "#333", 1),
                "offsetgroup": fmt,
                "customdata": hover,
                "hovertemplate": "%{customdata}<extra></extra>",
            }
        )
    return traces


def _tier_trace(fmt: str, xs: list[str], chosen: list[dict], tier_of: list, many: bool) -> dict:
    """'T1', 'T2'… above each KL bar."""
    return {
        "type": "scatter",
        "mode": "text",
        "x": xs,
        "y": [num(r.get("kl_ci_high")) * 1.25 for r in chosen],
        "xaxis": "x2",
        "yaxis": "y2",
        "offsetgroup": fmt,
        "showlegend": False,
        "legendgroup": fmt,
        "hoverinfo": "skip",
        "text": [f"T{t[1]}" if t[1] is not None else "" for t in tier_of],
        "textposition": "top center",
        "textfont": {"size": 8 if many else 10, "color": "#333"},
        "cliponaxis": False,
    }


def _bars_layout(task: TaskInfo, xs: list[str]) -> dict:
    tilted = len(xs) > 8
    return {
        "barmode": "group",
        "scattermode": "group",
        "height": 640,
        "margin": {"t": 40, "b": 130 if tilted else 60, "l": 80, "r": 20},
        "legend": {"title": {"text": "format"}, "orientation": "h", "y": 1.08, "x": 0},
        "xaxis": {"anchor": "y", "tickangle": -60 if tilted else 0, "categoryorder": "array", "categoryarray": xs},
        "xaxis2": {"anchor": "y2", "matches": "x", "showticklabels": False},
        "yaxis": {
            "domain": [0, 0.44],
            "title": {"text": f"{task.loss_label}<br>(95% CI)"},
            "zeroline": True,
            "zerolinecolor": "#444",
        },
        "yaxis2": {
            "domain": [0.52, 1],
            "type": "log",
            "dtick": 1,
            "exponentformat": "power",
            "title": {"text": "mean KL(FP32 || quantized)<br>nats, 95% CI"},
        },
    }


def sensitivity_bars_fig(results: dict, task: TaskInfo, view: str) -> tuple[dict, str]:
    """Grouped bars per format (KL on a log scale above, the loss below) and the note on which units are shown."""
    sens = results["sensitivity"]
    units, note = bar_units(results, view)
    label = {r["unit"]: unit_label(r) for r in sens["rows"]}
    rows = {(r["unit"], r["format"]): r for r in view_rows(sens, view)}
    rank = tiers(sens, view)
    xs = [label[u] for u in units]
    data = []
    for fmt in sensitivity_formats(results):
        chosen = [rows.get((u, fmt), {}) for u in units]
        tier_of = [rank.get((u, fmt), (None, None)) for u in units]
        hover = [
            hover_html(
                [
                    f"{u} at {fmt}",
                    f"mean KL {fmt_num(r.get('kl_mean'))} {ci_text(r, 'kl_ci_low', 'kl_ci_high')}",
                    f"{task.loss_label} {fmt_num(r.get(task.loss))} {ci_text(r, task.ci_low, task.ci_high)}",
                    f"rank {t[0]}, tier {t[1]}" if t[1] is not None else "not ranked",
                ]
            )
            for u, r, t in zip(units, chosen, tier_of)
        ]
        data += _bar_traces(fmt, color_of(results, fmt), xs, chosen, hover, task)
        data.append(_tier_trace(fmt, xs, chosen, tier_of, len(units) > 12))
    return {"data": data, "layout": _bars_layout(task, xs)}, note


def _shade(values: list[float]) -> list:
    """log10 of positive values scaled to 0..1 within ``values`` (None where not positive)."""
    logs = [math.log10(v) if v > 0 else math.nan for v in values]
    seen = [x for x in logs if math.isfinite(x)]
    lo, hi = (min(seen), max(seen)) if seen else (0.0, 1.0)
    return [(x - lo) / ((hi - lo) or 1.0) if math.isfinite(x) else None for x in logs]


def _grid_heatmap(results: dict, rows: list[dict], formats: list[str], grid, common: dict, hover) -> dict:
    """One block x sub-unit panel per format, side by side, each on its own log scale."""
    blocks, subs, _ = grid
    data, layout = (
        [],
        {
            "margin": {"t": 60, "b": 120, "l": 80, "r": 20},
            "height": max(420, 190 + 24 * len(blocks)),
            "yaxis": {"autorange": "reversed", "tickfont": {"size": 10}},
            "annotations": [],
        },
    )
    gap = 0.04
    width = (1 - gap * (len(formats) - 1)) / len(formats)
    for i, fmt in enumerate(formats):
        cells = unit_grid([r for r in rows if r["format"] == fmt])[2]
        values = [[num(cells.get((b, s), {}).get("kl_mean")) for s in subs] for b in blocks]
        flat = _shade([v for line in values for v in line])
        axis, left = ("" if i == 0 else str(i + 1)), i * (width + gap)
        data.append(
            {
                **common,
                "x": subs,
                "y": [f"block {b}" for b in blocks],
                "xaxis": f"x{axis}",
                "yaxis": "y",
                "name": fmt,
                "z": [flat[k * len(subs) : (k + 1) * len(subs)] for k in range(len(blocks))],
                "text": [[fmt_num(v, 2) for v in line] for line in values],
                "customdata": [[hover(cells[(b, s)]) if (b, s) in cells else "" for s in subs] for b in blocks],
            }
        )
        layout[f"xaxis{axis}"] = {
            "domain": [left, left + width],
            "anchor": "y",
            "tickangle": -35,
            "tickfont": {"size": 10},
        }
        layout["annotations"].append(
            {
                "text": f"<b>{esc(fmt)}</b>",
                "xref": "paper",
                "yref": "paper",
                "x": left + width / 2,
                "y": 1.0,
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"color": color_of(results, fmt), "size": 14},
            }
        )
    return {"data": data, "layout": layout}


def _unit_format_heatmap(rows: list[dict], formats: list[str], common: dict, hover) -> dict:
    """Unit x format, each format's column on its own log scale."""
    units = list(dict.fromkeys(r["unit"] for r in rows))
    by = {(r["unit"], r["format"]): r for r in rows}
    values = [[num(by.get((u, f), {}).get("kl_mean")) for f in formats] for u in units]
    columns = [_shade([line[j] for line in values]) for j in range(len(formats))]
    data = [
        {
            **common,
            "x": formats,
            "y": units,
            "z": [[column[i] for column in columns] for i in range(len(units))],
            "text": [[fmt_num(v, 2) for v in line] for line in values],
            "customdata": [[hover(by[(u, f)]) if (u, f) in by else "" for f in formats] for u in units],
        }
    ]
    layout = {
        "margin": {"t": 70, "b": 30, "l": 90, "r": 20},
        "height": 120 + 24 * len(units),
        "yaxis": {"autorange": "reversed"},
        "xaxis": {"side": "top", "tickfont": {"size": 13}},
    }
    return {"data": data, "layout": layout}


def heatmap_fig(results: dict, view: str) -> dict:
    """Mean KL per block x sub-unit (one panel per format) or per unit x format, with the value in each cell."""
    sens = results["sensitivity"]
    formats = sensitivity_formats(results)
    rows = view_rows(sens, view)
    rank = tiers(sens, view)

    def hover(r):
        t = rank.get((r["unit"], r["format"]), (None, None))
        return hover_html(
            [
                f"{r['unit']} at {r['format']}",
                f"mean KL {fmt_num(r.get('kl_mean'))} {ci_text(r, 'kl_ci_low', 'kl_ci_high')}",
                f"rank {t[0]}, tier {t[1]}",
            ]
        )

    common = {
        "type": "heatmap",
        "colorscale": SHADES,
        "zmin": 0,
        "zmax": 1,
        "showscale": False,
        "texttemplate": "%{text}",
        "textfont": {"size": 10 if len(rows) > 24 else 13},
        "hovertemplate": "%{customdata}<extra></extra>",
        "xgap": 1,
        "ygap": 1,
    }
    grid = sensitivity_grid(results, view)
    if grid is not None:
        return _grid_heatmap(results, rows, formats, grid, common, hover)
    return _unit_format_heatmap(rows, formats, common, hover)


# ---------------------------------------------------------------- frontier


def _plan_hover(row: dict, task: TaskInfo) -> str:
    lines = [str(row["plan"]), *plan_figures(row, task), f"mean KL {fmt_num(row.get('kl_mean'))}"]
    if finite(row.get("predicted_loss")):
        estimated = f" ({row['estimated_pairs']} estimated pairs)" if row.get("estimated_pairs") else ""
        lines.append(
            f"predicted loss {fmt_num(row['predicted_loss'])}{estimated}, measured/predicted "
            f"{fmt_num(row.get('measured_over_predicted'))}"
        )
    if row.get("formats"):
        lines.append(f"formats: {counts_text(row)}")
    return hover_html(lines)


def _series(results: dict, rows: list[dict]) -> dict[str, list[dict]]:
    """Plans by legend series (one per kind, one per uniform format), each in order of size."""
    groups: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: num(r["avg_bits"])):
        groups.setdefault(plan_style(results, r)[2], []).append(r)
    return groups


def _series_traces(results: dict, task: TaskInfo, members: list[dict], yr, shown) -> list[dict]:
    """A series on the loss axis (edge triangles for off-range plans) and on the KL axis."""
    lo, hi = yr
    colour, marker, series = plan_style(results, members[0])
    ys = [num(r[task.loss]) for r in members]
    clipped = [not (lo <= y <= hi) for y in ys]
    common = {
        "type": "scatter",
        "name": series,
        "legendgroup": series,
        "x": [num(r["avg_bits"]) for r in members],
        "customdata": [_plan_hover(r, task) for r in members],
        "hovertemplate": "%{customdata}<extra></extra>",
    }
    line = (
        {"color": colour, "width": 1.5} if members[0]["kind"] in ("allocated", "mixed") and len(members) > 1 else None
    )
    drawn = {"mode": "lines+markers" if line else "markers", **({"line": line} if line else {})}
    error = _error_y(members, ys, task.ci_low, task.ci_high, colour, 1.2)
    error["array"] = [0 if c else e for e, c in zip(error["array"], clipped)]
    error["arrayminus"] = [0 if c else e for e, c in zip(error["arrayminus"], clipped)]
    symbols = [("triangle-up" if y > hi else "triangle-down") if c else SYMBOL[marker] for y, c in zip(ys, clipped)]
    return [
        {
            **common,
            **drawn,
            "y": [shown(y) for y in ys],
            "xaxis": "x",
            "yaxis": "y",
            "error_y": error,
            "marker": {"color": colour, "size": 11, "line": {"color": "#000", "width": 0.7}, "symbol": symbols},
        },
        {
            **common,
            **drawn,
            "y": [num(r.get("kl_mean")) for r in members],
            "xaxis": "x2",
            "yaxis": "y2",
            "showlegend": False,
            "marker": {"color": colour, "size": 9, "symbol": SYMBOL[marker], "line": {"color": "#000", "width": 0.7}},
        },
    ]


def _frontier_layout(task: TaskInfo, xr, yr, annotations: list[dict]) -> dict:
    (x0, x1), (lo, hi) = xr, yr
    return {
        "height": 560,
        "margin": {"t": 40, "b": 60, "l": 80, "r": 20},
        "legend": {"orientation": "h", "y": -0.15, "x": 0},
        "xaxis": {"domain": [0, 0.6], "range": [x0, x1], "title": {"text": "average stored bits per weight"}},
        "yaxis": {"range": [lo, hi], "title": {"text": f"{task.loss_label}, 95% CI"}, "zeroline": False},
        "xaxis2": {"domain": [0.7, 1], "anchor": "y2", "title": {"text": "average stored bits per weight"}},
        "yaxis2": {
            "anchor": "x2",
            "type": "log",
            "dtick": 1,
            "exponentformat": "power",
            "title": {"text": "mean KL(FP32 || plan), nats"},
        },
        "shapes": [
            {
                "type": "line",
                "xref": "x",
                "yref": "y",
                "x0": x0,
                "x1": x1,
                "y0": 0,
                "y1": 0,
                "line": {"color": "#777", "dash": "dot", "width": 1.5},
            }
        ],
        "annotations": [
            *annotations,
            {
                "text": "FP32",
                "x": x0,
                "y": 0,
                "xref": "x",
                "yref": "y",
                "xanchor": "left",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"color": "#555", "size": 11},
            },
        ],
    }


def frontier_fig(results: dict, task: TaskInfo) -> dict:
    """Loss (95% CI, zoomed; off-range plans as edge triangles) and mean KL against average bits per weight."""
    rows = [r for r in plan_rows(results) if finite(r.get(task.loss)) and finite(r.get("avg_bits"))]
    lo, hi = loss_range(rows, task)
    xs = [num(r["avg_bits"]) for r in rows]
    x_pad = 0.06 * ((max(xs) - min(xs)) or 1.0)
    xr = (min(xs) - x_pad, max(xs) + x_pad)
    edge = hi - 0.015 * (hi - lo), lo + 0.015 * (hi - lo)

    def shown(y):
        return edge[0] if y > hi else edge[1] if y < lo else y

    data = [
        trace
        for members in _series(results, rows).values()
        for trace in _series_traces(results, task, members, (lo, hi), shown)
    ]
    return {
        "data": data,
        "layout": _frontier_layout(task, xr, (lo, hi), _frontier_labels(rows, task, xr, (lo, hi), shown)),
    }


def _frontier_labels(rows: list[dict], task: TaskInfo, xr, yr, shown) -> list[dict]:
    """Plotly annotations for every plan, placed (in a nominal pixel frame) so that none overlap, nor a marker,
    an error bar or the FP32 line; off-range plans say their true value."""
    w, h = FRONTIER_PLOT_PX
    (x0, x1), (lo, hi) = xr, yr

    def px(x, y):
        return (x - x0) / (x1 - x0) * w, (y - lo) / (hi - lo) * h

    anchors, sizes, texts, obstacles = [], [], [], [(0, px(0, 0)[1] - 2, w, px(0, 0)[1] + 2), (0, -6, 50, 22)]
    for r in rows:
        x, y = num(r["avg_bits"]), num(r[task.loss])
        text = plan_label(r)
        if shown(y) != y:
            text += f": {fmt_num(y)} {'↑' if y > hi else '↓'}"
        else:
            bx, blo = px(x, max(lo, num(r.get(task.ci_low))))
            _, bhi = px(x, min(hi, num(r.get(task.ci_high))))
            if math.isfinite(blo) and math.isfinite(bhi):
                obstacles.append((bx - 5, blo, bx + 5, bhi))
        anchors.append(px(x, shown(y)))
        sizes.append((6.6 * len(text) + 6, 16))
        texts.append(text)
    for line in line_kinds(rows).values():
        obstacles += segment_obstacles([px(num(r["avg_bits"]), shown(num(r[task.loss]))) for r in line])
    boxes = place_labels(anchors, sizes, (0, 0, w, h), obstacles, marker=7)
    out = []
    for r, (ax, ay), (bx0, by0, bx1, by1), text in zip(rows, anchors, boxes, texts):
        cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
        out.append(
            {
                "text": esc(text),
                "x": num(r["avg_bits"]),
                "y": shown(num(r[task.loss])),
                "xref": "x",
                "yref": "y",
                "ax": cx - ax,
                "ay": -(cy - ay),
                "showarrow": True,
                "arrowwidth": 0.7,
                "arrowcolor": "#999",
                "arrowhead": 0,
                "standoff": 6,
                "font": {"size": 11},
                "bgcolor": "rgba(255,255,255,0.75)",
            }
        )
    return out
