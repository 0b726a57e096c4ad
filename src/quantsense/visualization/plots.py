"""PNG figures of a results dict, and the helpers the HTML report shares with them.

matplotlib is imported inside the drawing functions only, so importing this module costs nothing at CLI start-up.
Everything about the task is read from ``results["workspace"]["task"]`` and every format's width and colour from
``results["formats"]`` (see :mod:`.schema`); the figures live in :mod:`.plot_sensitivity` and :mod:`.plot_frontier`.
"""

from quantsense.visualization.colours import PLAN_STYLE, color_of, format_color, hash_color, plan_style
from quantsense.visualization.labels import KL_LABEL, data_name, fmt_num, model_name, num, unit_label
from quantsense.visualization.placement import loss_range, place_labels, segment_obstacles
from quantsense.visualization.plot_common import DPI
from quantsense.visualization.plot_frontier import frontier_plot
from quantsense.visualization.plot_sensitivity import sensitivity_bars, sensitivity_heatmap
from quantsense.visualization.schema import FormatInfo, TaskInfo, format_counts, format_info, plan_label, plan_rows
from quantsense.visualization.sensitivity_data import (
    BAR_UNITS_MAX,
    bar_units,
    sensitivity_formats,
    tiers,
    unit_grid,
    view_of,
)

__all__ = [
    "BAR_UNITS_MAX",
    "DPI",
    "FormatInfo",
    "KL_LABEL",
    "PLAN_STYLE",
    "TaskInfo",
    "bar_units",
    "color_of",
    "data_name",
    "fmt_num",
    "format_color",
    "format_counts",
    "format_info",
    "frontier_plot",
    "hash_color",
    "loss_range",
    "model_name",
    "num",
    "place_labels",
    "plan_label",
    "plan_rows",
    "plan_style",
    "segment_obstacles",
    "sensitivity_bars",
    "sensitivity_formats",
    "sensitivity_heatmap",
    "tiers",
    "unit_grid",
    "unit_label",
    "view_of",
]
