"""The report's sentences, each computed from results.json: the headline facts and "what to ship"."""

from __future__ import annotations

import html
import math

from quantsense.visualization.labels import ci_text, data_name, finite, fmt_num, model_name, num
from quantsense.visualization.schema import TaskInfo, baseline_summary, data_description, plan_rows

VIEW_TEXT = {
    "only": "only this unit quantized",
    "all_but": "everything but this unit quantized",
    "all": "everything quantized",
}


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def hover_html(lines: list[str]) -> str:
    """Escaped lines of a Plotly hover box."""
    return "<br>".join(esc(line) for line in lines)


# ---------------------------------------------------------------- what to ship


def _size(row: dict) -> tuple[float, float]:
    """Sort key for 'smallest': model MB when known, then average bits per weight."""
    mb = num(row.get("model_mb"))
    return (mb if math.isfinite(mb) else math.inf, num(row.get("avg_bits")))


def plan_figures(row: dict, task: TaskInfo) -> list[str]:
    """A plan's measured figures: size, compression, the loss with its CI, the metric."""
    parts = []
    if finite(row.get("avg_bits")):
        parts.append(f"{fmt_num(row['avg_bits'])} bits/weight")
    if finite(row.get("model_mb")):
        parts.append(f"{fmt_num(row['model_mb'])} MB")
    if finite(row.get("compression")):
        parts.append(f"{fmt_num(row['compression'])}× compression")
    parts.append(f"{task.loss_label} {fmt_num(row.get(task.loss))}, 95% CI {ci_text(row, task.ci_low, task.ci_high)}")
    if finite(row.get(task.metric)):
        parts.append(f"{task.metric_label} {fmt_num(row[task.metric])}")
    return parts


def _named(row: dict, task: TaskInfo) -> str:
    return f"{row['plan']} — {'; '.join(plan_figures(row, task))}"


def _first_advice(rows: list[dict], task: TaskInfo) -> str:
    clear = [r for r in rows if num(r[task.ci_low]) <= 0.0 <= num(r[task.ci_high])]
    if clear:
        return (
            f"Smallest plan whose {task.loss_name} is indistinguishable from zero (its 95% CI includes 0), "
            f"of {len(rows)} measured: {_named(min(clear, key=_size), task)}."
        )
    lowest = min(rows, key=lambda r: num(r[task.loss]))
    return (
        f"No plan is indistinguishable from FP32: the 95% CI of the {task.loss_name} excludes 0 for all "
        f"{len(rows)} measured plans. The lowest loss is {_named(lowest, task)}."
    )


def _tolerance_advice(rows: list[dict], task: TaskInfo, tolerance: float) -> str:
    within = [r for r in rows if num(r[task.ci_high]) <= tolerance]
    if within:
        return (
            f"Smallest plan whose upper 95% bound of the {task.loss_name} is within your tolerance of "
            f"{fmt_num(tolerance)}: {_named(min(within, key=_size), task)}."
        )
    tightest = min(rows, key=lambda r: num(r[task.ci_high]))
    return (
        f"No plan's upper 95% bound of the {task.loss_name} is within your tolerance of {fmt_num(tolerance)}; "
        f"the smallest upper bound is {fmt_num(tightest[task.ci_high])} ({tightest['plan']})."
    )


def ship_advice(results: dict, tolerance: float | None = None) -> list[str]:
    """Plain-text sentences, each true of the plan rows (frontier and mixed): the smallest plan whose loss CI
    includes 0, and the smallest whose upper 95% bound is within ``tolerance`` (in the loss's units)."""
    task = TaskInfo.from_results(results)
    rows = [
        r
        for r in plan_rows(results)
        if finite(r.get(task.loss)) and finite(r.get(task.ci_low)) and finite(r.get(task.ci_high))
    ]
    if not rows:
        return [
            "This folder has no measured plans (no frontier or mixed-precision rows with a loss interval), "
            "so there is no plan to recommend."
        ]
    out = [_first_advice(rows, task)]
    if tolerance is not None:
        out.append(_tolerance_advice(rows, task, tolerance))
    return out


# ---------------------------------------------------------------- headline


def measured_text(results: dict) -> list[str]:
    """What the folder measured, one phrase per phase."""
    out = []
    sens = results.get("sensitivity")
    if sens and sens.get("rows"):
        units = len({r["unit"] for r in sens["rows"]})
        views = ", ".join(VIEW_TEXT.get(v, v) for v in sens.get("views", []))
        out.append(
            f"sensitivity of {units} {sens.get('unit', 'unit')} units × {len(sens.get('formats', []))} formats "
            f"({', '.join(sens.get('formats', []))}); views: {views}"
        )
    frontier = results.get("frontier")
    if frontier and frontier.get("rows"):
        kinds: dict[str, int] = {}
        for r in frontier["rows"]:
            kinds[r.get("kind", "?")] = kinds.get(r.get("kind", "?"), 0) + 1
        out.append(
            f"size/loss frontier of {len(frontier['rows'])} plans ("
            + ", ".join(f"{n} {k}" for k, n in kinds.items())
            + f") over candidate formats {', '.join(frontier.get('candidates', []))}"
        )
    if (results.get("mixed") or {}).get("rows"):
        out.append(f"{len(results['mixed']['rows'])} mixed-precision plans")
    ablation = results.get("ablation")
    if ablation:
        out.append(f"ablation of block {ablation.get('block')} at {ablation.get('format')}")
    if results.get("export"):
        out.append("an export of the quantized model")
    return out or ["nothing beyond the FP32 reference"]


def _facts(results: dict, task: TaskInfo) -> list[tuple[str, str]]:
    ws = results.get("workspace", {})
    model, data, prov = ws.get("model", {}), ws.get("data", {}), results.get("provenance", {})
    size = data_description(results)
    versions = " · ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items())
    scheme = ws.get("scheme") or {}
    return [
        (
            "Model",
            f"{model.get('source', '?')} — {model.get('blocks', '?')} blocks ({model.get('block_path', '?')}), "
            f"{model.get('head') or task.head or model.get('kind') or '?'}, {model.get('dtype', '?')} on {model.get('device', '?')}, "
            f"fingerprint {model.get('fingerprint', '?')}",
        ),
        (
            "Data",
            f"{data.get('source', '?')} — task {data.get('task', task.name)}"
            + (f", {size}" if size else "")
            + f", fingerprint {data.get('fingerprint', '?')}",
        ),
        ("Reference", baseline_summary(results, task)),
        ("Measured", "; ".join(measured_text(results))),
        ("Differs from FP32", task.differs_test),
        ("Scheme", ", ".join(f"{k} {fmt_num(v)}" for k, v in scheme.items()) + f"; seed {ws.get('seed', '—')}"),
        ("When", f"{prov.get('created', '?')} — {prov.get('command', '?')}"),
        ("Versions", versions + (f" · git {str(prov['git'])[:12]}" if prov.get("git") else "")),
    ]


def headline(results: dict, task: TaskInfo, nav: str = "") -> str:
    """The page header: model on data, the baseline sentence, the facts, and ``nav`` (HTML) below them."""
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in _facts(results, task))
    return (
        f"<header><h1>{esc(model_name(results))} on {esc(data_name(results))}</h1>"
        f"<p class=lede>{esc(baseline_summary(results, task))}</p><dl class=facts>{items}</dl>{nav}</header>"
    )
