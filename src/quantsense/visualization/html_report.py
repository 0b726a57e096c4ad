"""One self-contained report.html per results folder: interactive Plotly figures, sortable tables, a glossary and a
"what to ship" paragraph computed from the numbers.

The page needs no network: Plotly's JavaScript is inlined. Plotly is imported only inside ``write_html_report``.
Every sentence is computed from results.json; all text is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from quantsense.errors import QuantsenseError
from quantsense.visualization.plots import (
    KL_LABEL,
    PLAN_STYLE,
    Task,
    bar_units,
    fmt_num,
    format_color,
    format_counts,
    loss_range,
    model_name,
    data_name,
    num,
    place_labels,
    segment_obstacles,
    plan_format,
    plan_rows,
    sensitivity_formats,
    short_label,
    task_of,
    tiers,
    unit_grid,
    unit_label,
    view_of,
)

VIEW_TEXT = {"only": "only this unit quantized", "all_but": "everything but this unit quantized",
             "all": "everything quantized"}
SHADES = [[0.0, "#fcfdbf"], [0.25, "#feb078"], [0.5, "#f1605d"], [0.75, "#9e2f7f"], [1.0, "#2d1160"]]  # magma, light->dark
RESULTS_KEYS = ("provenance", "workspace", "baseline")  # what every results.json written by a study holds
FRONTIER_PLOT_PX = (620.0, 400.0)  # nominal plot-area size the frontier labels are placed for


# ---------------------------------------------------------------- small helpers


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def _finite(value) -> bool:
    return math.isfinite(num(value))


def _ci(row: dict, low: str, high: str) -> str:
    lo, hi = row.get(low), row.get(high)
    return f"[{fmt_num(lo)}, {fmt_num(hi)}]" if _finite(lo) and _finite(hi) else "—"


def _json_for_script(obj) -> str:
    """JSON safe inside a <script> element (no '</script>' can close it early), NaN/inf as null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    text = json.dumps(clean(obj), allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---------------------------------------------------------------- what to ship


def _size(row: dict) -> tuple[float, float]:
    """Sort key for 'smallest': model MB when known, then average bits per weight."""
    mb = num(row.get("model_mb"))
    return (mb if math.isfinite(mb) else math.inf, num(row.get("avg_bits")))


def _plan_figures(row: dict, task: Task) -> str:
    parts = []
    if _finite(row.get("avg_bits")):
        parts.append(f"{fmt_num(row['avg_bits'])} bits/weight")
    if _finite(row.get("model_mb")):
        parts.append(f"{fmt_num(row['model_mb'])} MB")
    if _finite(row.get("compression")):
        parts.append(f"{fmt_num(row['compression'])}× compression")
    parts.append(f"{task.loss_label} {fmt_num(row.get(task.loss))}, 95% CI {_ci(row, task.ci_low, task.ci_high)}")
    if _finite(row.get(task.metric)):
        parts.append(f"{task.metric_label} {fmt_num(row[task.metric])}")
    return "; ".join(parts)


def _loss_name(task: Task) -> str:
    return task.loss_label.split(" (")[0]


def ship_advice(results: dict, tolerance: float | None = None) -> list[str]:
    """Plain-text sentences, each true of the plan rows (frontier and mixed): the smallest plan whose loss CI
    includes 0, and the smallest whose upper 95% bound is within ``tolerance`` (in the loss's units)."""
    task = task_of(results)
    rows = [r for r in plan_rows(results)
            if _finite(r.get(task.loss)) and _finite(r.get(task.ci_low)) and _finite(r.get(task.ci_high))]
    if not rows:
        return ["This folder has no measured plans (no frontier or mixed-precision rows with a loss interval), "
                "so there is no plan to recommend."]
    out = []
    clear = [r for r in rows if num(r[task.ci_low]) <= 0.0 <= num(r[task.ci_high])]
    if clear:
        best = min(clear, key=_size)
        out.append(f"Smallest plan whose {_loss_name(task)} is indistinguishable from zero (its 95% CI includes 0), "
                   f"of {len(rows)} measured: {best['plan']} — {_plan_figures(best, task)}.")
    else:
        lowest = min(rows, key=lambda r: num(r[task.loss]))
        out.append(f"No plan is indistinguishable from FP32: the 95% CI of the {_loss_name(task)} excludes 0 for all "
                   f"{len(rows)} measured plans. The lowest loss is {lowest['plan']} — {_plan_figures(lowest, task)}.")
    if tolerance is not None:
        within = [r for r in rows if num(r[task.ci_high]) <= tolerance]
        if within:
            best = min(within, key=_size)
            out.append(f"Smallest plan whose upper 95% bound of the {_loss_name(task)} is within your tolerance of "
                       f"{fmt_num(tolerance)}: {best['plan']} — {_plan_figures(best, task)}.")
        else:
            tightest = min(rows, key=lambda r: num(r[task.ci_high]))
            out.append(f"No plan's upper 95% bound of the {_loss_name(task)} is within your tolerance of "
                       f"{fmt_num(tolerance)}; the smallest upper bound is {fmt_num(tightest[task.ci_high])} "
                       f"({tightest['plan']}).")
    return out


# ---------------------------------------------------------------- headline


def _baseline_text(results: dict, task: Task) -> str:
    base = results.get("baseline") or {}
    value = fmt_num(base.get(task.metric), 4)
    label = task.metric_label
    text = f"FP32 {label[:-2]}: {value} %" if label.endswith(" %") else f"FP32 {label}: {value}"
    if "correct" in base and "n" in base:
        text += f" ({base['correct']}/{base['n']} correct)"
    if "scored_tokens" in base:
        text += f" over {base['scored_tokens']} scored tokens"
        if "context" in base:
            text += f" (context {base['context']}, stride {base.get('stride', '—')})"
    return text


def _measured_text(results: dict) -> list[str]:
    out = []
    sens = results.get("sensitivity")
    if sens and sens.get("rows"):
        units = len({r["unit"] for r in sens["rows"]})
        views = ", ".join(VIEW_TEXT.get(v, v) for v in sens.get("views", []))
        out.append(f"sensitivity of {units} {sens.get('unit', 'unit')} units × {len(sens.get('formats', []))} formats "
                   f"({', '.join(sens.get('formats', []))}); views: {views}")
    frontier = results.get("frontier")
    if frontier and frontier.get("rows"):
        kinds = {}
        for r in frontier["rows"]:
            kinds[r.get("kind", "?")] = kinds.get(r.get("kind", "?"), 0) + 1
        out.append(f"size/loss frontier of {len(frontier['rows'])} plans ("
                   + ", ".join(f"{n} {k}" for k, n in kinds.items())
                   + f") over candidate formats {', '.join(frontier.get('candidates', []))}")
    if (results.get("mixed") or {}).get("rows"):
        out.append(f"{len(results['mixed']['rows'])} mixed-precision plans")
    ablation = results.get("ablation")
    if ablation:
        out.append(f"ablation of block {ablation.get('block')} at {ablation.get('format')}")
    if results.get("export"):
        out.append("an export of the quantized model")
    return out or ["nothing beyond the FP32 reference"]


def _headline(results: dict, task: Task) -> str:
    ws = results.get("workspace", {})
    model, data, prov = ws.get("model", {}), ws.get("data", {}), results.get("provenance", {})
    sizes = ", ".join(f"{k} {data[k]}" for k in ("examples", "tokens", "context", "stride") if k in data)
    versions = " · ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items())
    scheme = ws.get("scheme") or {}
    facts = [
        ("Model", f"{model.get('source', '?')} — {model.get('blocks', '?')} blocks ({model.get('block_path', '?')}), "
                  f"{model.get('kind', '?')}, {model.get('dtype', '?')} on {model.get('device', '?')}, "
                  f"fingerprint {model.get('fingerprint', '?')}"),
        ("Data", f"{data.get('source', '?')} — task {data.get('task', task.name)}" + (f", {sizes}" if sizes else "")
                 + f", fingerprint {data.get('fingerprint', '?')}"),
        ("Reference", _baseline_text(results, task)),
        ("Measured", "; ".join(_measured_text(results))),
        ("Differs from FP32", f"{task.differs_test}"),
        ("Scheme", ", ".join(f"{k} {fmt_num(v)}" for k, v in scheme.items()) + f"; seed {ws.get('seed', '—')}"),
        ("When", f"{prov.get('created', '?')} — {prov.get('command', '?')}"),
        ("Versions", versions + (f" · git {str(prov['git'])[:12]}" if prov.get("git") else "")),
    ]
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
    return (f"<header><h1>{esc(model_name(results))} on {esc(data_name(results))}</h1>"
            f"<p class=lede>{esc(_baseline_text(results, task))}</p><dl class=facts>{items}</dl></header>")


# ---------------------------------------------------------------- tables


def _cell(value, sort=None) -> str:
    sort = num(value) if sort is None and not isinstance(value, str) else sort
    attr = ""
    if isinstance(sort, (int, float)) and not isinstance(sort, bool) and math.isfinite(sort):
        attr = f' data-v="{sort!r}"'
    elif isinstance(sort, str):
        attr = f' data-v="{esc(sort)}"'
    elif sort is not None:
        attr = ' data-v=""'
    return f"<td{attr}>{esc(fmt_num(value) if not isinstance(value, str) else value)}</td>"


def _table(table_id: str, caption: str, columns: list[tuple[str, str, object]], rows: list[dict]) -> str:
    """``columns`` is (header, hint, getter); a getter is a row key or a function row -> (text, sort value)."""
    head = "".join(f'<th scope=col title="{esc(hint)}">{esc(header)}</th>' for header, hint, _ in columns)
    body = []
    for row in rows:
        cells = []
        for _, _, get in columns:
            if callable(get):
                text, sort = get(row)
                cells.append(_cell(text, sort))
            else:
                cells.append(_cell(row.get(get)))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class=tablewrap><table class=sortable id="{esc(table_id)}"><caption>{esc(caption)} '
            f'<span class=hint>(click a header to sort)</span></caption><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _ci_col(task: Task):
    return lambda r: (_ci(r, task.ci_low, task.ci_high), num(r.get(task.ci_low)))


def _kl_ci(r):
    return _ci(r, "kl_ci_low", "kl_ci_high"), num(r.get("kl_ci_low"))


def _task_columns(task: Task) -> list:
    """The task's own columns (from results.json); "loss_ci" is the loss's 95 % interval."""
    return [(header, text, _ci_col(task) if key == "loss_ci" else key) for header, text, key in task.report_columns]


def _differs(r):
    v = r.get("distinguishable_from_fp32")
    return ("yes" if v else "no", "1" if v else "0") if isinstance(v, bool) else ("—", None)


def _sensitivity_table(results: dict, task: Task) -> str:
    sens = results["sensitivity"]
    rank = {view: tiers(sens, view) for view in sens.get("views", ["only"])}
    columns = [("unit", "module or block", "unit"), ("format", "weight format", "format"),
               ("view", "only: just this unit quantized; all_but: every other unit quantized", "view"),
               ("bits/weight", "stored bits per weight, scales included", "bits_per_weight"),
               ("rank", "1 = largest mean KL in this view and format",
                lambda r: (rank.get(r["view"], {}).get((r["unit"], r["format"]), (None, None))[0],) * 2),
               ("tier", "units whose KL intervals overlap share a tier; 1 = most sensitive",
                lambda r: (rank.get(r["view"], {}).get((r["unit"], r["format"]), (None, None))[1],) * 2),
               ("KL mean", KL_LABEL, "kl_mean"), ("KL 95% CI", "bootstrap 95% CI of the mean KL", _kl_ci),
               ("KL p95", "95th percentile of per-example KL", "kl_p95"),
               *_task_columns(task),
               ("differs from FP32", task.differs_test, _differs),
               ("weight SQNR dB", "signal-to-quantization-noise ratio of the weights", "weight_sqnr_db")]
    return _table("sensitivity-table", f"Sensitivity: {len(sens['rows'])} rows", columns, sens["rows"])


def _plan_table(results: dict, task: Task, rows: list[dict], table_id: str, caption: str) -> str:
    def formats(r):
        counts = format_counts(results, r["plan"])
        text = ", ".join(f"{f} ×{n}" for f, n in counts.items()) or "—"
        return text, text

    columns = [("plan", "plan name", "plan"), ("kind", "allocated, uniform, hand or mixed", "kind"),
               ("avg bits/weight", "average stored bits per weight, scales included", "avg_bits"),
               ("model MB", "size of the quantized model", "model_mb"),
               ("compression", "FP32 size / plan size", "compression"),
               *_task_columns(task),
               ("KL mean", KL_LABEL, "kl_mean"),
               ("differs from FP32", task.differs_test, _differs),
               ("predicted loss", "the allocator's predicted loss", "predicted_loss"),
               ("measured / predicted", "measured loss / predicted loss", "measured_over_predicted"),
               ("formats (units)", "how many units got each format", formats)]
    return _table(table_id, caption, columns, rows)


def _exact(value) -> str:
    """A key/value figure in full (six significant digits), integers and booleans as they are."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    return fmt_num(value)


def _kv_table(table_id: str, caption: str, data: dict) -> str:
    rows = [{"key": k, "value": v if not isinstance(v, (dict, list)) else json.dumps(v)} for k, v in data.items()]
    return _table(table_id, caption, [("field", "", "key"),
                                      ("value", "", lambda r: (r["value"] if isinstance(r["value"], str)
                                                               else _exact(r["value"]),
                                                               num(r["value"]) if not isinstance(r["value"], str)
                                                               else r["value"]))], rows)


# ---------------------------------------------------------------- glossary


def glossary(results: dict, task: Task) -> list[tuple[str, str]]:
    scheme = (results.get("workspace") or {}).get("scheme") or {}
    terms = [("mean KL(FP32 || quantized)", "Kullback–Leibler divergence of the quantized model's output distribution "
              "from FP32's, averaged over examples (tokens for a language model), in nats; 0 means identical outputs."),
             ("95% CI", "95% confidence interval: the range the true value lies in with 95% confidence given the "
              "evaluation set's sampling noise. A loss whose CI includes 0 is indistinguishable from FP32."),
             ("bits/weight", "stored bits per weight including scales (and offsets), e.g. q4_0 is 4.5, int4 per "
              "channel slightly above 4.")]
    terms += [tuple(t) for t in task.glossary]
    terms.append(("differs from FP32", f"yes when {task.differs_test}."))
    if results.get("sensitivity"):
        terms += [("rank", "order by mean KL within one view and format, 1 = most sensitive."),
                  ("tier", "groups of units whose KL confidence intervals overlap (connected components); tier 1 is "
                   "the most sensitive group. Units in one tier cannot be ordered reliably."),
                  ("view", "only: just this unit is quantized; all_but: every unit except this one is quantized."),
                  ("KL p95", "95th percentile of the per-example KL: the tail, not the average."),
                  ("weight SQNR", "signal-to-quantization-noise ratio of the weights in dB (higher = closer).")]
    if plan_rows(results):
        terms += [("allocated / uniform / hand", "allocated: formats chosen per unit by the solver for a bit budget; "
                   "uniform: one format everywhere; hand: a fixed strategy for comparison."),
                  ("compression", "FP32 model size divided by the plan's model size."),
                  ("predicted loss", "the loss the allocator expected from the per-unit measurements; "
                   "measured / predicted above 1 means units interact worse than additively.")]
    names = set((results.get("sensitivity") or {}).get("formats", [])) | \
        set((results.get("frontier") or {}).get("candidates", []))
    if any(str(n).lower().startswith("q") for n in names):
        terms.append(("q4_0, q5_1, q8_0…", "GGUF block formats: weights in blocks of 32 sharing one scale "
                      "(_1 also an offset); the digit is the bits per weight before scales."))
    if any(str(n).lower().startswith("int") for n in names):
        terms.append(("int8, int4…", "N-bit integer weights; scheme " + (", ".join(f"{k} {fmt_num(v)}" for k, v in scheme.items())
                                                                         or "as recorded") + "."))
    return terms


def _glossary_html(results: dict, task: Task) -> str:
    items = "".join(f"<dt>{esc(t)}</dt><dd>{esc(d)}</dd>" for t, d in glossary(results, task))
    return f"<aside class=glossary><h2>Glossary</h2><dl>{items}</dl></aside>"


# ---------------------------------------------------------------- figures (Plotly JSON)


def _hover(lines: list[str]) -> str:
    return "<br>".join(esc(line) for line in lines)


def _sensitivity_bars_fig(results: dict, task: Task, view: str) -> tuple[dict, str]:
    sens = results["sensitivity"]
    units, note = bar_units(sens, view)
    label = {r["unit"]: unit_label(r) for r in sens["rows"]}
    rows = {(r["unit"], r["format"]): r for r in sens["rows"] if r["view"] == view}
    rank = tiers(sens, view)
    xs = [label[u] for u in units]
    data = []
    for fmt in sensitivity_formats(sens):
        chosen = [rows.get((u, fmt), {}) for u in units]
        tier_of = [rank.get((u, fmt), (None, None)) for u in units]
        hover = [_hover([f"{u} at {fmt}", f"mean KL {fmt_num(r.get('kl_mean'))} {_ci(r, 'kl_ci_low', 'kl_ci_high')}",
                         f"{task.loss_label} {fmt_num(r.get(task.loss))} {_ci(r, task.ci_low, task.ci_high)}",
                         f"rank {t[0]}, tier {t[1]}" if t[1] is not None else "not ranked"])
                 for u, r, t in zip(units, chosen, tier_of)]
        for axis, key, lo, hi in (("2", "kl_mean", "kl_ci_low", "kl_ci_high"), ("", task.loss, task.ci_low, task.ci_high)):
            v = [num(r.get(key)) for r in chosen]
            data.append({
                "type": "bar", "name": fmt, "legendgroup": fmt, "showlegend": axis == "2", "x": xs, "y": v,
                "xaxis": f"x{axis}", "yaxis": f"y{axis}", "marker": {"color": format_color(fmt)},
                "error_y": {"type": "data", "symmetric": False, "color": "#333", "thickness": 1,
                            "array": [max(0.0, num(r.get(hi)) - x) for r, x in zip(chosen, v)],
                            "arrayminus": [max(0.0, x - num(r.get(lo))) for r, x in zip(chosen, v)]},
                "offsetgroup": fmt, "customdata": hover, "hovertemplate": "%{customdata}<extra></extra>"})
        tops = [num(r.get("kl_ci_high")) for r in chosen]
        data.append({"type": "scatter", "mode": "text", "x": xs, "y": [t * 1.25 for t in tops], "xaxis": "x2",
                     "yaxis": "y2", "offsetgroup": fmt, "showlegend": False, "legendgroup": fmt, "hoverinfo": "skip",
                     "text": [f"T{t[1]}" if t[1] is not None else "" for t in tier_of], "textposition": "top center",
                     "textfont": {"size": 10 if len(units) <= 12 else 8, "color": "#333"}, "cliponaxis": False})
    layout = {
        "barmode": "group", "scattermode": "group", "height": 640, "margin": {"t": 40, "b": 130 if len(units) > 8 else 60, "l": 80, "r": 20},
        "legend": {"title": {"text": "format"}, "orientation": "h", "y": 1.08, "x": 0},
        "xaxis": {"anchor": "y", "tickangle": -60 if len(units) > 8 else 0, "categoryorder": "array",
                  "categoryarray": xs},
        "xaxis2": {"anchor": "y2", "matches": "x", "showticklabels": False},
        "yaxis": {"domain": [0, 0.44], "title": {"text": f"{task.loss_label}<br>(95% CI)"}, "zeroline": True,
                  "zerolinecolor": "#444"},
        "yaxis2": {"domain": [0.52, 1], "type": "log", "dtick": 1, "exponentformat": "power",
                   "title": {"text": "mean KL(FP32 || quantized)<br>nats, 95% CI"}},
    }
    return {"data": data, "layout": layout}, note


def _heatmap_fig(results: dict, view: str) -> dict:
    sens = results["sensitivity"]
    formats = sensitivity_formats(sens)
    rows = [r for r in sens["rows"] if r["view"] == view]
    rank = tiers(sens, view)

    def hover(r, fmt):
        t = rank.get((r["unit"], fmt), (None, None))
        return _hover([f"{r['unit']} at {fmt}", f"mean KL {fmt_num(r.get('kl_mean'))} "
                       f"{_ci(r, 'kl_ci_low', 'kl_ci_high')}", f"rank {t[0]}, tier {t[1]}"])

    def shade(values):
        logs = [math.log10(v) if v > 0 else math.nan for v in values]
        finite = [x for x in logs if math.isfinite(x)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        return [(x - lo) / ((hi - lo) or 1.0) if math.isfinite(x) else None for x in logs]

    common = {"type": "heatmap", "colorscale": SHADES, "zmin": 0, "zmax": 1, "showscale": False,
              "texttemplate": "%{text}", "textfont": {"size": 10 if len(rows) > 24 else 13}, "hovertemplate": "%{customdata}<extra></extra>",
              "xgap": 1, "ygap": 1}
    grid = unit_grid(rows) if sens.get("unit") != "block" else None
    if grid is not None:
        blocks, subs, _ = grid
        data, layout = [], {"margin": {"t": 60, "b": 120, "l": 80, "r": 20}, "height": max(420, 190 + 24 * len(blocks)),
                            "yaxis": {"autorange": "reversed", "tickfont": {"size": 10}}, "annotations": []}
        gap = 0.04
        width = (1 - gap * (len(formats) - 1)) / len(formats)
        for i, fmt in enumerate(formats):
            cells = unit_grid([r for r in rows if r["format"] == fmt])[2]
            values = [[num(cells.get((b, s), {}).get("kl_mean")) for s in subs] for b in blocks]
            flat = shade([v for line in values for v in line])
            z = [flat[k * len(subs):(k + 1) * len(subs)] for k in range(len(blocks))]
            axis = "" if i == 0 else str(i + 1)
            data.append({**common, "x": subs, "y": [f"block {b}" for b in blocks], "z": z, "xaxis": f"x{axis}",
                         "yaxis": "y", "name": fmt,
                         "text": [[fmt_num(v, 2) for v in line] for line in values],
                         "customdata": [[hover(cells[(b, s)], fmt) if (b, s) in cells else "" for s in subs]
                                        for b in blocks]})
            layout[f"xaxis{axis}"] = {"domain": [i * (width + gap), i * (width + gap) + width], "anchor": "y",
                                      "tickangle": -35, "tickfont": {"size": 10}}
            layout["annotations"].append({"text": f"<b>{esc(fmt)}</b>", "xref": "paper", "yref": "paper",
                                          "x": i * (width + gap) + width / 2, "y": 1.0, "yanchor": "bottom",
                                          "showarrow": False, "font": {"color": format_color(fmt), "size": 14}})
        return {"data": data, "layout": layout}
    units = list(dict.fromkeys(r["unit"] for r in rows))
    by = {(r["unit"], r["format"]): r for r in rows}
    values = [[num(by.get((u, f), {}).get("kl_mean")) for f in formats] for u in units]
    columns = [shade([line[j] for line in values]) for j in range(len(formats))]
    z = [[columns[j][i] for j in range(len(formats))] for i in range(len(units))]
    data = [{**common, "x": formats, "y": units, "z": z, "text": [[fmt_num(v, 2) for v in line] for line in values],
             "customdata": [[hover(by[(u, f)], f) if (u, f) in by else "" for f in formats] for u in units]}]
    layout = {"margin": {"t": 70, "b": 30, "l": 90, "r": 20}, "height": 120 + 24 * len(units),
              "yaxis": {"autorange": "reversed"}, "xaxis": {"side": "top", "tickfont": {"size": 13}}}
    return {"data": data, "layout": layout}


def _frontier_fig(results: dict, task: Task) -> dict:
    rows = [r for r in plan_rows(results) if _finite(r.get(task.loss)) and _finite(r.get("avg_bits"))]
    lo, hi = loss_range(rows, task)
    xs = [num(r["avg_bits"]) for r in rows]
    x_pad = 0.06 * ((max(xs) - min(xs)) or 1.0)
    x0, x1 = min(xs) - x_pad, max(xs) + x_pad
    edge = hi - 0.015 * (hi - lo), lo + 0.015 * (hi - lo)

    def shown(y):
        return edge[0] if y > hi else edge[1] if y < lo else y

    def hover(r):
        counts = format_counts(results, r["plan"])
        lines = [str(r["plan"]), _plan_figures(r, task).replace("; ", "\n")]
        lines = [lines[0], *lines[1].split("\n"), f"mean KL {fmt_num(r.get('kl_mean'))}"]
        if _finite(r.get("predicted_loss")):
            lines.append(f"predicted loss {fmt_num(r['predicted_loss'])}, measured/predicted "
                         f"{fmt_num(r.get('measured_over_predicted'))}")
        if counts:
            lines.append("formats: " + ", ".join(f"{f} ×{n}" for f, n in counts.items()))
        return _hover(lines)

    groups: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: num(r["avg_bits"])):
        kind = r.get("kind", "mixed")
        key = f"uniform {plan_format(results, r) or r['plan']}" if kind == "uniform" else kind
        groups.setdefault(key, []).append(r)
    data = []
    for key, members in groups.items():
        kind = members[0].get("kind", "mixed")
        colour, marker, series = PLAN_STYLE.get(kind, PLAN_STYLE["mixed"])
        if kind == "uniform":
            colour, series = format_color(plan_format(results, members[0])), key
        symbol = {"o": "circle", "s": "square", "^": "triangle-up", "D": "diamond"}[marker]
        ys = [num(r[task.loss]) for r in members]
        clipped = [not (lo <= y <= hi) for y in ys]
        common = {"type": "scatter", "name": series, "legendgroup": series, "x": [num(r["avg_bits"]) for r in members],
                  "customdata": [hover(r) for r in members], "hovertemplate": "%{customdata}<extra></extra>"}
        line = {"color": colour, "width": 1.5} if kind in ("allocated", "mixed") and len(members) > 1 else None
        data.append({**common, "y": [shown(y) for y in ys], "xaxis": "x", "yaxis": "y",
                     "mode": "lines+markers" if line else "markers", **({"line": line} if line else {}),
                     "marker": {"color": colour, "size": 11, "line": {"color": "#000", "width": 0.7},
                                "symbol": [("triangle-up" if y > hi else "triangle-down") if c else symbol
                                           for y, c in zip(ys, clipped)]},
                     "error_y": {"type": "data", "symmetric": False, "color": colour, "thickness": 1.2,
                                 "array": [0 if c else max(0.0, num(r[task.ci_high]) - y)
                                           for r, y, c in zip(members, ys, clipped)],
                                 "arrayminus": [0 if c else max(0.0, y - num(r[task.ci_low]))
                                                for r, y, c in zip(members, ys, clipped)]}})
        data.append({**common, "y": [num(r.get("kl_mean")) for r in members], "xaxis": "x2", "yaxis": "y2",
                     "showlegend": False, "mode": "lines+markers" if line else "markers", **({"line": line} if line else {}),
                     "marker": {"color": colour, "size": 9, "symbol": symbol, "line": {"color": "#000", "width": 0.7}}})
    annotations = _frontier_labels(results, rows, task, (x0, x1), (lo, hi), shown)
    annotations.append({"text": "FP32", "x": x0, "y": 0, "xref": "x", "yref": "y", "xanchor": "left",
                        "yanchor": "bottom", "showarrow": False, "font": {"color": "#555", "size": 11}})
    layout = {
        "height": 560, "margin": {"t": 40, "b": 60, "l": 80, "r": 20},
        "legend": {"orientation": "h", "y": -0.15, "x": 0},
        "xaxis": {"domain": [0, 0.6], "range": [x0, x1], "title": {"text": "average stored bits per weight"}},
        "yaxis": {"range": [lo, hi], "title": {"text": f"{task.loss_label}, 95% CI"}, "zeroline": False},
        "xaxis2": {"domain": [0.7, 1], "anchor": "y2", "title": {"text": "average stored bits per weight"}},
        "yaxis2": {"anchor": "x2", "type": "log", "dtick": 1, "exponentformat": "power",
                   "title": {"text": "mean KL(FP32 || plan), nats"}},
        "shapes": [{"type": "line", "xref": "x", "yref": "y", "x0": x0, "x1": x1, "y0": 0, "y1": 0,
                    "line": {"color": "#777", "dash": "dot", "width": 1.5}}],
        "annotations": annotations,
    }
    return {"data": data, "layout": layout}


def _frontier_labels(results: dict, rows: list[dict], task: Task, xr, yr, shown) -> list[dict]:
    """Plotly annotations for every plan, placed (in a nominal pixel frame) so that none overlap, nor a marker,
    an error bar or the FP32 line; off-range plans say their true value."""
    w, h = FRONTIER_PLOT_PX
    (x0, x1), (lo, hi) = xr, yr

    def px(x, y):
        return (x - x0) / (x1 - x0) * w, (y - lo) / (hi - lo) * h

    anchors, sizes, texts, obstacles = [], [], [], [(0, px(0, 0)[1] - 2, w, px(0, 0)[1] + 2), (0, -6, 50, 22)]
    for r in rows:
        x, y = num(r["avg_bits"]), num(r[task.loss])
        text = short_label(results, r)
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
    for kind in ("allocated", "mixed"):
        line = sorted((r for r in rows if r.get("kind", "mixed") == kind), key=lambda r: num(r["avg_bits"]))
        obstacles += segment_obstacles([px(num(r["avg_bits"]), shown(num(r[task.loss]))) for r in line])
    boxes = place_labels(anchors, sizes, (0, 0, w, h), obstacles, marker=7)
    out = []
    for r, (ax, ay), (bx0, by0, bx1, by1), text in zip(rows, anchors, boxes, texts):
        cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
        out.append({"text": esc(text), "x": num(r["avg_bits"]), "y": shown(num(r[task.loss])), "xref": "x", "yref": "y",
                    "ax": cx - ax, "ay": -(cy - ay), "showarrow": True, "arrowwidth": 0.7, "arrowcolor": "#999",
                    "arrowhead": 0, "standoff": 6, "font": {"size": 11}, "bgcolor": "rgba(255,255,255,0.75)"})
    return out


# ---------------------------------------------------------------- page


_CSS = """
:root{--ink:#1d1f24;--muted:#5c6370;--line:#dfe2e8;--bg:#f6f7f9;--accent:#1f4e9c}
*{box-sizing:border-box}body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg)}
.page{display:grid;grid-template-columns:minmax(0,1fr) 320px;gap:24px;max-width:1640px;margin:0 auto;padding:24px}
header,section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin-bottom:18px}
h1{margin:0 0 4px;font-size:26px}h2{margin:0 0 10px;font-size:19px}h3{font-size:15px;margin:16px 0 6px}
.lede{font-size:18px;margin:0 0 10px;color:var(--accent)}
dl.facts{display:grid;grid-template-columns:150px 1fr;gap:2px 14px;margin:0;font-size:13.5px}
dl.facts dt{color:var(--muted);font-weight:600}dl.facts dd{margin:0;overflow-wrap:anywhere}
.ship p{font-size:16px;margin:6px 0}.ship strong{color:var(--accent)}
.note{color:var(--muted);font-size:13px;margin:4px 0 8px}
.tablewrap{max-height:520px;overflow:auto;border:1px solid var(--line);border-radius:6px;margin:8px 0 4px}
table{border-collapse:collapse;font-size:12.5px;width:100%;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding:6px 8px;caption-side:top}
.hint{font-weight:400;color:var(--muted)}
th{position:sticky;top:0;background:#eef1f6;cursor:pointer;user-select:none;text-align:left;padding:6px 8px;white-space:nowrap;border-bottom:1px solid var(--line)}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
td{padding:4px 8px;border-bottom:1px solid #f0f1f4;white-space:nowrap}tbody tr:hover{background:#f3f6fb}
aside.glossary{position:sticky;top:16px;align-self:start;max-height:calc(100vh - 32px);overflow:auto;background:#fff;border:1px solid var(--line);border-radius:10px;padding:16px 18px;font-size:13px}
aside.glossary dt{font-weight:700;margin-top:8px}aside.glossary dd{margin:2px 0 0;color:#333}
nav{font-size:13.5px;margin:8px 0 0}nav a{margin-right:14px;color:var(--accent)}
.fig{width:100%}
@media (max-width:1100px){.page{grid-template-columns:1fr}aside.glossary{position:static;max-height:none}}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var key = function (row) { var c = row.cells[col]; return c.hasAttribute('data-v') ? c.getAttribute('data-v') : c.textContent; };
      var numeric = rows.every(function (r) { var k = key(r); return k === '' || !isNaN(Number(k)); });
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === '' || y === '') { return (x === '') - (y === ''); }
        var d = numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true});
        return asc ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

_PLOT_JS = """
(function () {
  var figures = JSON.parse(document.getElementById('figures').textContent);
  Object.keys(figures).forEach(function (id) {
    var f = figures[id];
    f.layout.font = {family: 'system-ui, -apple-system, Segoe UI, Roboto, sans-serif', size: 12};
    f.layout.paper_bgcolor = '#fff'; f.layout.plot_bgcolor = '#fff';
    Plotly.newPlot(id, f.data, f.layout, {responsive: true, displaylogo: false});
  });
})();
"""


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _fig_div(figures: dict, fig_id: str, fig: dict, note: str = "") -> str:
    figures[fig_id] = fig
    return (f'<p class=note>{esc(note)}</p>' if note else "") + f'<div class=fig id="{esc(fig_id)}"></div>'


def _sensitivity_section(results: dict, task: Task, figures: dict) -> str:
    sens = results["sensitivity"]
    parts = []
    for view in sens.get("views", ["only"]):
        fig, note = _sensitivity_bars_fig(results, task, view)
        caption = (f"Per-{sens.get('unit', 'unit')} sensitivity, {VIEW_TEXT.get(view, view)} ({view} view). "
                   "Bars: mean KL (top, log) and the loss (bottom) with 95% intervals; T1, T2… mark tiers"
                   + (f"; showing {note}" if note else "") + ".")
        parts.append(f"<h3>{esc(view)} view</h3>" + _fig_div(figures, f"fig-bars-{view}", fig, caption))
    view = view_of(sens)
    kind = "block × linear unit, one panel per format" if sens.get("unit") != "block" and unit_grid(
        [r for r in sens["rows"] if r["view"] == view]) else f"{sens.get('unit', 'unit')} × format"
    parts.append("<h3>Heatmap</h3>" + _fig_div(
        figures, "fig-heatmap", _heatmap_fig(results, view),
        f"Mean KL(FP32 || quantized) per {kind} ({view} view); the value is printed in each cell, colour is a log "
        "scale within each format (darker = more sensitive)."))
    parts.append(_sensitivity_table(results, task))
    return _section("sensitivity", "Sensitivity", "".join(parts))


def _ship_section(results: dict, tolerance: float | None) -> str:
    sentences = ship_advice(results, tolerance)
    return _section("ship", "What to ship", "".join(f"<p>{esc(s)}</p>" for s in sentences) +
                    "<p class=note>Plans are those measured in this folder (frontier and mixed-precision rows); "
                    "'smallest' is by model MB, then average bits per weight.</p>")


def _plans_section(results: dict, task: Task, figures: dict) -> str:
    rows = plan_rows(results)
    lo, hi = loss_range([r for r in rows if _finite(r.get(task.loss))], task)
    off = [r for r in rows if _finite(r.get(task.loss)) and not lo <= num(r[task.loss]) <= hi]
    note = (f"Left: {task.loss_label}, 95% CI, against average bits per weight; the dotted line is FP32. "
            "Right: mean KL on a log scale. Hover a point for its measured figures and per-unit formats.")
    if off:
        note += (f" The loss axis is zoomed to {fmt_num(lo)}…{fmt_num(hi)}; {len(off)} plan(s) outside it are drawn "
                 "at the edge as ▲/▼ with their true value.")
    body = _fig_div(figures, "fig-frontier", _frontier_fig(results, task), note)
    if (results.get("frontier") or {}).get("rows"):
        body += _plan_table(results, task, [r for r in rows if r.get("kind") != "mixed"] if results.get("mixed")
                            else rows, "frontier-table", "Frontier plans")
    if (results.get("mixed") or {}).get("rows"):
        body += _plan_table(results, task, [r for r in rows if r.get("kind") == "mixed"], "mixed-table",
                            "Mixed-precision plans")
    return _section("plans", "Plans: size against loss", body)


def render_html(results: dict, tolerance: float | None = None) -> str:
    """The report page as a string (Plotly's JavaScript inlined)."""
    from plotly.offline import get_plotlyjs

    task = task_of(results)
    figures: dict[str, dict] = {}
    sections = [_ship_section(results, tolerance)]
    nav = [("ship", "What to ship")]
    if (results.get("sensitivity") or {}).get("rows"):
        sections.append(_sensitivity_section(results, task, figures))
        nav.append(("sensitivity", "Sensitivity"))
    if any(_finite(r.get(task.loss)) and _finite(r.get("avg_bits")) for r in plan_rows(results)):
        sections.append(_plans_section(results, task, figures))
        nav.append(("plans", "Plans"))
    if results.get("ablation"):
        sections.append(_section("ablation", "Ablation", _kv_table("ablation-table", "Ablation", results["ablation"])))
        nav.append(("ablation", "Ablation"))
    if results.get("export"):
        sections.append(_section("export", "Export", _kv_table("export-table", "Export", results["export"])))
        nav.append(("export", "Export"))
    sections.append(_section("reference", "FP32 reference", _kv_table("baseline-table", "Baseline",
                                                                        results.get("baseline") or {})))
    nav.append(("reference", "Reference"))
    links = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav)
    head = _headline(results, task).replace("</header>", f"<nav>{links}</nav></header>")
    title = f"quantsense report: {model_name(results)} on {data_name(results)}"
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_CSS}</style>"
            f"<script>{get_plotlyjs()}</script></head><body><div class=page><main>{head}{''.join(sections)}</main>"
            f"{_glossary_html(results, task)}</div>"
            f'<script type="application/json" id="figures">{_json_for_script(figures)}</script>'
            f"<script>{_SORT_JS}{_PLOT_JS}</script></body></html>")


def write_html_report(results: dict, path: str | Path, tolerance: float | None = None) -> Path:
    """Write the self-contained report page for ``results`` to ``path`` (atomically); returns the path."""
    from quantsense.io import write_atomic

    path = Path(path)
    write_atomic(path, render_html(results, tolerance))
    return path


def rebuild_report(results_dir: str | Path, tolerance: float | None = None) -> Path:
    """Re-create ``results_dir/report.html`` from ``results_dir/results.json``."""
    results_dir = Path(results_dir)
    from quantsense.io import read_json

    source = results_dir / "results.json"
    results = read_json(source, f"no results.json in {results_dir}: point at a folder written by a quantsense study",
                        "re-run the study to write it again")
    missing = [key for key in RESULTS_KEYS if not isinstance(results, dict) or key not in results]
    if missing:
        raise QuantsenseError(f"{source} is not a quantsense results file (no {', '.join(missing)}): "
                              "re-run the study to write it again")
    try:
        return write_html_report(results, results_dir / "report.html", tolerance)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # a results file edited or truncated by hand
        raise QuantsenseError(f"{source} is damaged ({type(exc).__name__}: {exc}): re-run the study to write it again") from None
