"""The report's sortable tables: sensitivity rows, plan rows, and key/value sections (ablation, export, baseline).

Columns come from the results: the task's own ``report_columns`` sit between the generic ones.
"""

from __future__ import annotations

import json
import math

from quantsense.sweeps.record import SequentialRecord, sweep_record
from quantsense.visualization.labels import KL_LABEL, ci_text, fmt_num, num
from quantsense.visualization.report_text import esc
from quantsense.visualization.schema import TaskInfo, format_counts
from quantsense.visualization.sensitivity_data import tiers


def _cell(value, sort=None) -> str:
    """A <td> showing ``value``, with ``data-v`` (what the table sorts by) when there is one."""
    sort = num(value) if sort is None and not isinstance(value, str) else sort
    attr = ""
    if isinstance(sort, (int, float)) and not isinstance(sort, bool) and math.isfinite(sort):
        attr = f' data-v="{sort!r}"'
    elif isinstance(sort, str):
        attr = f' data-v="{esc(sort)}"'
    elif sort is not None:
        attr = ' data-v=""'
    return f"<td{attr}>{esc(fmt_num(value) if not isinstance(value, str) else value)}</td>"


def _row_cells(row: dict, columns) -> str:
    cells = []
    for _, _, get in columns:
        cells.append(_cell(*get(row)) if callable(get) else _cell(row.get(get)))
    return "<tr>" + "".join(cells) + "</tr>"


def table(table_id: str, caption: str, columns: list[tuple[str, str, object]], rows: list[dict]) -> str:
    """``columns`` is (header, hint, getter); a getter is a row key or a function row -> (text, sort value)."""
    head = "".join(f'<th scope=col title="{esc(hint)}">{esc(header)}</th>' for header, hint, _ in columns)
    body = "".join(_row_cells(row, columns) for row in rows)
    return (
        f'<div class=tablewrap><table class=sortable id="{esc(table_id)}"><caption>{esc(caption)} '
        f"<span class=hint>(click a header to sort)</span></caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def _kl_ci(r):
    return ci_text(r, "kl_ci_low", "kl_ci_high"), num(r.get("kl_ci_low"))


def _differs(r):
    v = r.get("distinguishable_from_fp32")
    return ("yes" if v else "no", "1" if v else "0") if isinstance(v, bool) else ("—", None)


def _task_columns(task: TaskInfo) -> list:
    """The task's own columns (from results.json); "loss_ci" is the loss's 95 % interval."""

    def loss_ci(r):
        return ci_text(r, task.ci_low, task.ci_high), num(r.get(task.ci_low))

    return [(header, text, loss_ci if key == "loss_ci" else key) for header, text, key in task.report_columns]


def sensitivity_table(results: dict, task: TaskInfo) -> str:
    sens = results["sensitivity"]
    rank = {view: tiers(sens, view) for view in sens.get("views", ["only"])}

    def ranked(i):
        return lambda r: (rank.get(r["view"], {}).get((r["unit"], r["format"]), (None, None))[i],) * 2

    columns = [
        ("unit", "module or block", "unit"),
        ("format", "weight format", "format"),
        ("view", "only: just this unit quantized; all_but: every other unit quantized", "view"),
        ("bits/weight", "stored bits per weight, scales included", "bits_per_weight"),
        ("rank", "1 = largest mean KL in this view and format", ranked(0)),
        ("tier", "units whose KL intervals overlap share a tier; 1 = most sensitive", ranked(1)),
        ("KL mean", KL_LABEL, "kl_mean"),
        ("KL 95% CI", "bootstrap 95% CI of the mean KL", _kl_ci),
        ("KL p95", "95th percentile of per-example KL", "kl_p95"),
        *_task_columns(task),
        ("differs from FP32", task.differs_test, _differs),
        ("weight SQNR dB", "signal-to-quantization-noise ratio of the weights", "weight_sqnr_db"),
    ]
    if isinstance(sweep_record(sens.get("sweep")), SequentialRecord):
        columns.append(
            (
                "data %",
                "share of the data (input tokens) this row was measured on: a sequential sweep stops "
                "a unit once its interval overlaps no other unit's",
                "data_pct",
            )
        )
    return table("sensitivity-table", f"Sensitivity: {len(sens['rows'])} rows", columns, sens["rows"])


def counts_text(row: dict) -> str:
    """'q4_0 ×120, q8_0 ×30': how many units got each format, '—' when the row does not say."""
    return ", ".join(f"{f} ×{n}" for f, n in format_counts(row).items()) or "—"


def plan_table(task: TaskInfo, rows: list[dict], table_id: str, caption: str) -> str:
    columns = [
        ("plan", "plan name", "plan"),
        ("kind", "allocated, uniform, hand or mixed", "kind"),
        ("avg bits/weight", "average stored bits per weight, scales included", "avg_bits"),
        ("model MB", "size of the quantized model", "model_mb"),
        ("compression", "FP32 size / plan size", "compression"),
        *_task_columns(task),
        ("KL mean", KL_LABEL, "kl_mean"),
        ("differs from FP32", task.differs_test, _differs),
        (
            "predicted loss",
            "the allocator's predicted loss: the sum of its units' single-unit losses",
            "predicted_loss",
        ),
        (
            "estimated pairs",
            "units whose loss in the predicted sum was estimated by the loss model, not measured",
            "estimated_pairs",
        ),
        ("measured / predicted", "measured loss / predicted loss", "measured_over_predicted"),
        ("formats (units)", "how many units got each format", lambda r: (counts_text(r),) * 2),
    ]
    return table(table_id, caption, columns, rows)


def _exact(value) -> str:
    """A key/value figure in full (six significant digits), integers and booleans as they are."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    return fmt_num(value)


def _value(r) -> tuple:
    value = r["value"]
    return (value, value) if isinstance(value, str) else (_exact(value), num(value))


def kv_table(table_id: str, caption: str, data: dict) -> str:
    """One row per field of ``data``; nested values as JSON."""
    rows = [{"key": k, "value": v if not isinstance(v, (dict, list)) else json.dumps(v)} for k, v in data.items()]
    return table(table_id, caption, [("field", "", "key"), ("value", "", _value)], rows)
