"""What the sensitivity figures show, read from ``results["sensitivity"]``: formats, views, tiers, units, grids."""

from __future__ import annotations

from quantsense.errors import QuantsenseError
from quantsense.visualization.labels import num
from quantsense.visualization.schema import widest_first

BAR_UNITS_MAX = 40  # more units than this: the bar chart shows the most sensitive ones, the heatmap shows all


def sensitivity_of(results: dict) -> dict:
    """The sensitivity section, refused in one line when there are no rows to draw."""
    sens = results.get("sensitivity")
    if not sens or not sens.get("rows"):
        raise QuantsenseError("these results have no sensitivity rows: run `quantsense sensitivity` (or `run`) first")
    return sens


def sensitivity_formats(results: dict) -> list[str]:
    """The swept formats, widest first by bits per weight from the format table (unknown widths last)."""
    sens = results["sensitivity"]
    return widest_first(results, sens.get("formats") or [r["format"] for r in sens["rows"]])


def view_of(sens: dict) -> str:
    """The view one-figure summaries show: 'only' when measured."""
    views = sens.get("views") or ["only"]
    return "only" if "only" in views else views[0]


def view_rows(sens: dict, view: str) -> list[dict]:
    return [r for r in sens["rows"] if r["view"] == view]


def tiers(sens: dict, view: str) -> dict:
    """(unit, format) -> (rank, tier), from the ranked rows of ``view``."""
    return {
        (row["unit"], row["format"]): (row.get("rank"), row.get("tier"))
        for ranked in (sens.get("rankings") or {}).values()
        for row in ranked
        if row.get("view") == view
    }


def bar_units(results: dict, view: str) -> tuple[list[str], str]:
    """The units the bar chart shows, and a note saying which (all, or the most sensitive at the narrowest format)."""
    rows = view_rows(results["sensitivity"], view)
    units = list(dict.fromkeys(r["unit"] for r in rows))
    if len(units) <= BAR_UNITS_MAX:
        return units, ""
    narrowest = sensitivity_formats(results)[-1]
    order = sorted((r for r in rows if r["format"] == narrowest), key=lambda r: -num(r["kl_mean"]))
    chosen = [r["unit"] for r in order[:BAR_UNITS_MAX]]
    return chosen, f"the {len(chosen)} most sensitive of {len(units)} units at {narrowest}, most sensitive first"


def unit_grid(rows: list[dict]):
    """For units inside blocks: (blocks, sub-unit names, {(block, sub): row}) from each row's ``block`` and ``sub``;
    None when any row is not a sub-unit of a block (e.g. whole blocks)."""
    if not rows or any(r.get("block") is None or not r.get("sub") for r in rows):
        return None
    cells = {(int(r["block"]), r["sub"]): r for r in rows}
    return sorted({b for b, _ in cells}), list(dict.fromkeys(s for _, s in cells)), cells


def sensitivity_grid(results: dict, view: str):
    """The block x sub-unit grid of ``view``'s rows, or None (block sweeps, or units outside blocks)."""
    sens = results["sensitivity"]
    return None if sens.get("unit") == "block" else unit_grid(view_rows(sens, view))
