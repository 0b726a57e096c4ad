"""Markdown tables for the terminal and summary.md."""

from __future__ import annotations

import math


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        if abs(value) < 10 ** (-digits) and value != 0:
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} x{v}" for k, v in value.items())
    return str(value)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]], digits: int = 2) -> str:
    """``columns`` is (key, header) pairs."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k), digits) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])
