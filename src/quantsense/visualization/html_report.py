"""One self-contained report.html per results folder: interactive Plotly figures, sortable tables, a glossary and a
"what to ship" paragraph computed from the numbers.

The page needs no network: Plotly's JavaScript is inlined. Plotly is imported only inside ``render_html``.
Every sentence is computed from results.json (read through :mod:`.schema`); all text is HTML-escaped. The parts
live in :mod:`.report_text` (sentences), :mod:`.report_tables`, :mod:`.report_figures`, :mod:`.report_glossary`
and :mod:`.report_assets` (CSS and JavaScript); this module assembles the page.
"""

from __future__ import annotations

from pathlib import Path

from quantsense.errors import QuantsenseError
from quantsense.visualization.labels import data_name, finite, fmt_num, model_name, num
from quantsense.visualization.placement import loss_range
from quantsense.visualization.report_assets import CSS, PLOT_JS, SORT_JS, json_for_script
from quantsense.visualization.report_figures import frontier_fig, heatmap_fig, sensitivity_bars_fig
from quantsense.visualization.report_glossary import glossary, glossary_html
from quantsense.visualization.report_tables import kv_table, plan_table, sensitivity_table
from quantsense.visualization.report_text import VIEW_TEXT, esc, headline, ship_advice
from quantsense.visualization.schema import TaskInfo, migrate, plan_rows
from quantsense.sweeps.record import SequentialRecord, sweep_record
from quantsense.visualization.summary import sequential_text, sweep_text
from quantsense.visualization.sensitivity_data import sensitivity_grid, view_of

__all__ = ["glossary", "rebuild_report", "render_html", "ship_advice", "write_html_report"]

RESULTS_KEYS = ("provenance", "workspace", "baseline")  # what every results.json written by a study holds


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _fig_div(figures: dict, fig_id: str, fig: dict, note: str = "") -> str:
    figures[fig_id] = fig
    return (f"<p class=note>{esc(note)}</p>" if note else "") + f'<div class=fig id="{esc(fig_id)}"></div>'


def _sensitivity_section(results: dict, task: TaskInfo, figures: dict) -> str:
    sens = results["sensitivity"]
    parts = []
    for view in sens.get("views", ["only"]):
        fig, note = sensitivity_bars_fig(results, task, view)
        caption = (
            f"Per-{sens.get('unit', 'unit')} sensitivity, {VIEW_TEXT.get(view, view)} ({view} view). "
            "Bars: mean KL (top, log) and the loss (bottom) with 95% intervals; T1, T2… mark tiers"
            + (f"; showing {note}" if note else "")
            + "."
        )
        parts.append(f"<h3>{esc(view)} view</h3>" + _fig_div(figures, f"fig-bars-{view}", fig, caption))
    view = view_of(sens)
    kind = (
        "block × linear unit, one panel per format"
        if sensitivity_grid(results, view)
        else f"{sens.get('unit', 'unit')} × format"
    )
    parts.append(
        "<h3>Heatmap</h3>"
        + _fig_div(
            figures,
            "fig-heatmap",
            heatmap_fig(results, view),
            f"Mean KL(FP32 || quantized) per {kind} ({view} view); the value is printed in each cell, colour is a log "
            "scale within each format (darker = more sensitive).",
        )
    )
    parts.append(sensitivity_table(results, task))
    sweep = sweep_record(results["sensitivity"].get("sweep"))
    parts.append(f"<p class=note>{esc(sequential_text(sweep))}</p>" if isinstance(sweep, SequentialRecord) else "")
    return _section("sensitivity", "Sensitivity", "".join(parts))


def _ship_section(results: dict, tolerance: float | None) -> str:
    sentences = ship_advice(results, tolerance)
    return _section(
        "ship",
        "What to ship",
        "".join(f"<p>{esc(s)}</p>" for s in sentences)
        + "<p class=note>Plans are those measured in this folder (frontier and mixed-precision rows); "
        "'smallest' is by model MB, then average bits per weight.</p>",
    )


def _plans_section(results: dict, task: TaskInfo, figures: dict) -> str:
    rows = plan_rows(results)
    measured = [r for r in rows if finite(r.get(task.loss))]
    lo, hi = loss_range(measured, task)
    off = [r for r in measured if not lo <= num(r[task.loss]) <= hi]
    note = (
        f"Left: {task.loss_label}, 95% CI, against average bits per weight; the dotted line is FP32. "
        "Right: mean KL on a log scale. Hover a point for its measured figures and per-unit formats."
    )
    if off:
        note += (
            f" The loss axis is zoomed to {fmt_num(lo)}…{fmt_num(hi)}; {len(off)} plan(s) outside it are drawn "
            "at the edge as ▲/▼ with their true value."
        )
    body = _fig_div(figures, "fig-frontier", frontier_fig(results, task), note)
    frontier, mixed = (results.get("frontier") or {}).get("rows"), (results.get("mixed") or {}).get("rows")
    if frontier:
        body += plan_table(task, plan_rows(results, ("frontier",)), "frontier-table", "Frontier plans")
        sweep = sweep_record(results["frontier"].get("sweep"))
        body += f"<p class=note>{esc(sweep_text(sweep))}</p>" if sweep is not None else ""
    if mixed:
        body += plan_table(task, plan_rows(results, ("mixed",)), "mixed-table", "Mixed-precision plans")
    return _section("plans", "Plans: size against loss", body)


def _sections(results: dict, task: TaskInfo, tolerance: float | None, figures: dict) -> list[tuple[str, str, str]]:
    """(anchor, navigation text, section HTML) for every part this folder has."""
    out = [("ship", "What to ship", _ship_section(results, tolerance))]
    if (results.get("sensitivity") or {}).get("rows"):
        out.append(("sensitivity", "Sensitivity", _sensitivity_section(results, task, figures)))
    if any(finite(r.get(task.loss)) and finite(r.get("avg_bits")) for r in plan_rows(results)):
        out.append(("plans", "Plans", _plans_section(results, task, figures)))
    for key, title in (("ablation", "Ablation"), ("export", "Export")):
        if results.get(key):
            lines = "".join(f"<p>{esc(line)}</p>" for line in results[key].get("lines", []))  # the sentences, as text
            fields = {k: v for k, v in results[key].items() if k != "lines"}
            out.append((key, title, _section(key, title, lines + kv_table(f"{key}-table", title, fields))))
    reference = kv_table("baseline-table", "Baseline", results.get("baseline") or {})
    out.append(("reference", "Reference", _section("reference", "FP32 reference", reference)))
    return out


def render_html(results: dict, tolerance: float | None = None) -> str:
    """The report page as a string (Plotly's JavaScript inlined)."""
    from plotly.offline import get_plotlyjs

    task = TaskInfo.from_results(results)
    figures: dict[str, dict] = {}
    sections = _sections(results, task, tolerance, figures)
    links = "".join(f'<a href="#{esc(anchor)}">{esc(text)}</a>' for anchor, text, _ in sections)
    head = headline(results, task, f"<nav>{links}</nav>")
    title = f"quantsense report: {model_name(results)} on {data_name(results)}"
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style>"
        f"<script>{get_plotlyjs()}</script></head><body><div class=page><main>{head}"
        f"{''.join(html for _, _, html in sections)}</main>{glossary_html(results, task)}</div>"
        f'<script type="application/json" id="figures">{json_for_script(figures)}</script>'
        f"<script>{SORT_JS}{PLOT_JS}</script></body></html>"
    )


def write_html_report(results: dict, path: str | Path, tolerance: float | None = None) -> Path:
    """Write the self-contained report page for ``results`` to ``path`` (atomically); returns the path."""
    from quantsense.io import write_atomic

    path = Path(path)
    write_atomic(path, render_html(migrate(results), tolerance))
    return path


def rebuild_report(results_dir: str | Path, tolerance: float | None = None) -> Path:
    """Re-create ``results_dir/report.html`` from ``results_dir/results.json``."""
    results_dir = Path(results_dir)
    from quantsense.io import read_json

    source = results_dir / "results.json"
    results = read_json(
        source,
        f"no results.json in {results_dir}: point at a folder written by a quantsense study",
        "re-run the study to write it again",
    )
    missing = [key for key in RESULTS_KEYS if not isinstance(results, dict) or key not in results]
    if missing:
        raise QuantsenseError(
            f"{source} is not a quantsense results file (no {', '.join(missing)}): re-run the study to write it again"
        )
    try:
        results = migrate(results)  # an older layout brought up to this one; a newer one refused
    except QuantsenseError as exc:
        raise QuantsenseError(f"{source}: {exc}") from None
    try:
        return write_html_report(results, results_dir / "report.html", tolerance)
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
    ) as exc:  # a results file edited or truncated by hand
        raise QuantsenseError(
            f"{source} is damaged ({type(exc).__name__}: {exc}): re-run the study to write it again"
        ) from None
