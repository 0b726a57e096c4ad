"""Words and figures shared by the PNG plots, report.html and summary.md: numbers, model and data names, units."""

from __future__ import annotations

import math

KL_LABEL = "mean KL(FP32 || quantized), nats"


def num(value) -> float:
    """A results.json number as a float: None is NaN, the strings 'inf'/'-inf' are infinities."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def finite(value) -> bool:
    return math.isfinite(num(value))


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


def ci_text(row: dict, low: str, high: str) -> str:
    """'[lo, hi]' of a row's interval keys, '—' when either end is missing."""
    lo, hi = row.get(low), row.get(high)
    return f"[{fmt_num(lo)}, {fmt_num(hi)}]" if finite(lo) and finite(hi) else "—"


def _basename(source) -> str:
    return str(source or "?").rstrip("/\\").replace("\\", "/").split("/")[-1] or str(source)


def model_name(results: dict) -> str:
    return _basename(results.get("workspace", {}).get("model", {}).get("source"))


def data_name(results: dict) -> str:
    data = results.get("workspace", {}).get("data", {})
    base, task = _basename(data.get("source")), data.get("task")
    return f"{task} ({base})" if task and task not in base else base


def title(results: dict, what: str, width: int = 110) -> str:
    """'what — model on data', on two lines when longer than ``width``."""
    line = f"{what} — {model_name(results)} on {data_name(results)}"
    return line if len(line) <= width else f"{what}\n{model_name(results)} on {data_name(results)}"


def unit_label(row: dict) -> str:
    """A short name for a unit: 'block 3', or '3 · mlp.down_proj' for a linear unit (its block path dropped)."""
    if row.get("block") is not None and row.get("sub"):
        return f"{row['block']} · {row['sub']}"
    return str(row["unit"])
