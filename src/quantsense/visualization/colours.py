"""One fixed colour per format and one style per plan kind, the same in every PNG and HTML figure.

A format's colour comes from its entry in ``results["formats"]`` (see :class:`~.schema.FormatInfo`), never from
its name: ``code_bits`` picks the hue family (8-bit blue, 6 teal, 5 green, 4 orange, 3 red, 2 purple, 16 slate),
``variant`` the shade (int4 and q4_0 share one, q4_1 is lighter, q4_K darker); FP32 is grey, an unknown format
gets a stable hash-picked colour (crc32, the same in every process).
"""

from __future__ import annotations

import colorsys
import zlib

from quantsense.visualization.schema import FormatInfo, format_info, plan_label

FP32_COLOUR = "#6b6b6b"
_HUE = {1: 0.9, 2: 0.78, 3: 0.0, 4: 0.08, 5: 0.33, 6: 0.47, 7: 0.55, 8: 0.60}  # code bits -> hue (purple..blue)
_SHADE = {
    "": (0.62, 0.42),
    "0": (0.62, 0.42),
    "1": (0.55, 0.58),
    "k": (0.75, 0.32),
    "k_s": (0.60, 0.50),
    "k_m": (0.75, 0.32),
    "k_l": (0.80, 0.25),
}  # variant -> (saturation, lightness)
_OTHER_SHADE = (0.5, 0.45)
_WIDE = {"bf16": "#8a7b5b"}  # 16-bit codes by variant; the rest slate
_WIDE_DEFAULT = "#5b6f8a"

PLAN_STYLE = {
    "allocated": ("#111111", "o", "allocated (solver)"),
    "uniform": (None, "s", "uniform"),
    "hand": ("#9a9a9a", "^", "hand strategies"),
    "mixed": ("#111111", "D", "mixed-precision plans"),
    "preset": ("#b5651d", "P", "llama.cpp presets"),
    "given": ("#2a7ab0", "X", "given plans (GGUF files)"),
}


def _hex(r: float, g: float, b: float) -> str:
    return "#{:02x}{:02x}{:02x}".format(round(r * 255), round(g * 255), round(b * 255))


def hash_color(text: str) -> str:
    """A stable colour for something with no known width (the same text, the same colour, in any process)."""
    hue = (zlib.crc32(str(text).lower().encode()) % 360) / 360.0
    return _hex(*colorsys.hls_to_rgb(hue, 0.45, 0.5))


def format_color(info: FormatInfo | None) -> str:
    """The colour of a format entry; None is FP32."""
    if info is None or info.code_bits == 32:
        return FP32_COLOUR
    if info.code_bits == 16:
        return _WIDE.get(info.variant.lower(), _WIDE_DEFAULT)
    if info.code_bits not in _HUE:
        return hash_color(info.name)
    saturation, lightness = _SHADE.get(info.variant.lower(), _OTHER_SHADE)
    return _hex(*colorsys.hls_to_rgb(_HUE[info.code_bits], lightness, saturation))


def color_of(results: dict, name: str | None) -> str:
    """The colour of the format called ``name`` in these results (None: FP32)."""
    return format_color(format_info(results, name))


def plan_style(results: dict, row: dict) -> tuple[str, str, str]:
    """(colour, marker, legend series) of a plan row: a uniform plan in its format's colour, one series each."""
    colour, marker, series = PLAN_STYLE.get(row.get("kind"), PLAN_STYLE["mixed"])
    if row.get("kind") == "uniform":
        colour = color_of(results, row["format"]) if row.get("format") else hash_color(plan_label(row))
        series = f"uniform {plan_label(row)}"
    return colour, marker, series
