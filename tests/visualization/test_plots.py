import itertools
import math
import re
import sys

import pytest

from quantsense.errors import QuantsenseError
from quantsense.visualization.plots import (
    FormatInfo,
    TaskInfo,
    bar_units,
    color_of,
    format_color,
    frontier_plot,
    loss_range,
    place_labels,
    plan_rows,
    sensitivity_bars,
    sensitivity_formats,
    sensitivity_heatmap,
    unit_grid,
)
from tests.visualization import fixtures

PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize("name", ["classification_run", "classification_linear", "llm_blocks", "llm_linear"])
def test_sensitivity_figures_write_png_for_both_tasks_and_sizes(name, tmp_path):
    results = getattr(fixtures, name)()
    width, height = _png_size(sensitivity_bars(results, tmp_path / "bars.png"))
    assert width > 800 and height > 400
    width, height = _png_size(sensitivity_heatmap(results, tmp_path / "heat.png"))
    blocks = results["workspace"]["model"]["blocks"]
    assert height > 20 * blocks  # one readable row per block


@pytest.mark.parametrize("name", ["classification_run", "classification_frontier", "llm_frontier"])
def test_frontier_plot_writes_png(name, tmp_path):
    width, height = _png_size(frontier_plot(getattr(fixtures, name)(), tmp_path / "f.png"))
    assert width > 1000 and height > 400


def test_plots_need_their_sections(tmp_path):
    results = fixtures.export_only()
    with pytest.raises(QuantsenseError, match="no sensitivity rows"):
        sensitivity_bars(results, tmp_path / "b.png")
    with pytest.raises(QuantsenseError, match="no frontier or mixed-precision plans"):
        frontier_plot(results, tmp_path / "f.png")


ALL_FORMATS = ["int2", "int3", "int4", "int5", "int6", "int8", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "f16"]


def _described(*extra: dict) -> dict:
    """A results dict whose format table holds every fixture format, plus ``extra`` entries."""
    return {"formats": {**fixtures.format_table(*ALL_FORMATS), **{e["name"]: e for e in extra}}}


def _entry(name: str, code_bits: int, variant: str = "", bits: float | None = None) -> dict:
    return {
        "name": name,
        "family": "test",
        "spec": {"format": name},
        "label": name,
        "bits_per_weight": float(code_bits) if bits is None else bits,
        "code_bits": code_bits,
        "variant": variant,
        "export_targets": [],
        "glossary": ["test formats", "formats made up for a test"],
    }


def test_format_color_is_fixed_and_families_share_a_hue():
    results = _described(_entry("q4_k", 4, "K"))
    colours = {f: color_of(results, f) for f in [*ALL_FORMATS, "q4_k"]}
    assert colours["int4"] == color_of(results, "int4") == colours["q4_0"]
    assert colours["int8"] == colours["q8_0"]
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours.values())
    assert len({colours[f] for f in ["int2", "int3", "int4", "int5", "int6", "int8", "f16"]}) == 7
    assert len({colours[f] for f in ["q4_0", "q4_1", "q4_k"]}) == 3  # variants: distinct shades
    assert color_of(results, None) == format_color(None) == format_color(FormatInfo("f32", code_bits=32))
    assert color_of(results, "mystery_fmt") == color_of(results, "mystery_fmt")  # hash-picked, but stable (crc32)


def test_format_colour_comes_from_the_table_not_the_name():
    zz9 = _entry("zz9", 4, "0", bits=4.5)
    results = _described(zz9, _entry("int8_lookalike", 2), _entry("q4_0_wide", 16, "bf16"))
    assert color_of(results, "zz9") == color_of(results, "q4_0") == color_of(results, "int4")  # 4-bit hue, plain shade
    assert color_of(results, "zz9") != color_of(_described(_entry("zz9", 8)), "zz9")
    assert color_of(results, "int8_lookalike") == color_of(results, "int2") != color_of(results, "int8")
    assert color_of(results, "q4_0_wide") not in (color_of(results, "q4_0"), color_of(results, "f16"))
    # no table (results written by an older version): every format is unknown, even a familiar name
    assert color_of({}, "int4") == color_of({}, "int4") != color_of(results, "int4")
    assert color_of({}, "int4") != color_of({}, "int8")


def test_format_color_is_the_same_in_another_process():
    import subprocess

    code = (
        "from quantsense.visualization.plots import FormatInfo, format_color as f; "
        "print(f(FormatInfo('q4_K', code_bits=4, variant='K')), f(FormatInfo('something')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", **__import__("os").environ},
    )
    assert out.stdout.split() == [
        format_color(FormatInfo("q4_K", code_bits=4, variant="K")),
        format_color(FormatInfo("something")),
    ]


def test_sensitivity_formats_are_ordered_by_the_tables_widths():
    results = fixtures.llm_blocks()
    assert sensitivity_formats(results) == ["q8_0", "q5_0", "q4_0"]
    results["sensitivity"]["formats"] = ["q4_0", "zz9", "q8_0", "aa3"]
    results["formats"]["zz9"] = _entry("zz9", 4, bits=12.0)  # named like nothing, but the widest
    assert sensitivity_formats(results) == ["zz9", "q8_0", "q4_0", "aa3"]  # aa3 is unknown: last
    del results["formats"]
    assert sensitivity_formats(results) == ["q4_0", "zz9", "q8_0", "aa3"]  # all unknown: as given


def _overlap(a, b):
    return min(a[2], b[2]) - max(a[0], b[0]) > 1e-9 and min(a[3], b[3]) - max(a[1], b[1]) > 1e-9


def test_place_labels_crowded_points_do_not_overlap():
    anchors = [(300 + 6 * (i % 5), 200 + 5 * (i // 5)) for i in range(15)]  # 15 points within 30 x 15 px
    sizes = [(60 + 4 * i, 14) for i in range(15)]
    line = (0, 208, 800, 212)  # the FP32 line through the middle of the cluster
    boxes = place_labels(anchors, sizes, (0, 0, 800, 500), [line])
    assert len(boxes) == 15
    for a, b in itertools.combinations(boxes, 2):
        assert not _overlap(a, b), (a, b)
    for box, (w, h) in zip(boxes, sizes):
        assert math.isclose(box[2] - box[0], w) and math.isclose(box[3] - box[1], h)
        assert 0 <= box[0] and box[2] <= 800 and 0 <= box[1] and box[3] <= 500
        assert not _overlap(box, line)
    for box in boxes:  # no label covers any point
        assert not any(box[0] < x < box[2] and box[1] < y < box[3] for x, y in anchors)


def test_place_labels_keeps_a_free_label_next_to_its_point():
    (box,) = place_labels([(100.0, 100.0)], [(40.0, 10.0)], (0, 0, 400, 400))
    gap_x = max(box[0] - 100, 100 - box[2], 0)
    gap_y = max(box[1] - 100, 100 - box[3], 0)
    assert box[0] > 100  # first choice: to the right of the point
    assert 0 < math.hypot(gap_x, gap_y) < 12


def test_loss_range_zooms_on_the_allocated_plans_and_leaves_far_points_outside():
    results = fixtures.classification_frontier()
    task = TaskInfo.from_results(results)
    rows = plan_rows(results)
    lo, hi = loss_range(rows, task)
    int2 = next(r for r in rows if r["plan"] == "uniform int2")
    int3 = next(r for r in rows if r["plan"] == "uniform int3")
    allocated = [r for r in rows if r["kind"] == "allocated"]
    assert int2["drop"] > hi  # 41.9 points: drawn at the edge with its value
    assert lo < 0 < hi and lo <= min(r["drop_ci_low"] for r in allocated)
    assert hi >= max(r["drop_ci_high"] for r in allocated) and hi >= int3["drop_ci_high"]


def test_bar_units_show_the_most_sensitive_of_many_linear_units():
    results = fixtures.llm_linear()
    sens = results["sensitivity"]
    units, note = bar_units(results, "only")
    assert len(units) == 40 and note.startswith("the 40 most sensitive of 210 units at q4_0")
    kl = {r["unit"]: r["kl_mean"] for r in sens["rows"] if r["format"] == "q4_0"}
    assert [kl[u] for u in units] == sorted(kl.values(), reverse=True)[:40]
    assert bar_units(fixtures.llm_blocks(), "only") == ([f"block {b}" for b in range(30)], "")


def test_unit_grid_places_linear_units():
    rows = [r for r in fixtures.classification_linear()["sensitivity"]["rows"] if r["format"] == "int4"]
    blocks, subs, cells = unit_grid(rows)
    assert blocks == list(range(6)) and subs == list(fixtures.MINILM_SUBS)
    assert cells[(3, "intermediate.dense")]["unit"] == "bert.encoder.layer.3.intermediate.dense"
    assert unit_grid([{"unit": "block 0", "block": 0, "sub": None}]) is None


def test_unit_grid_reads_block_and_sub_not_the_unit_name():
    rows = [
        {"unit": "encoder.layer.3.mlp.fc1", "block": None, "sub": None},  # a name that looks like a grid cell
        {"unit": "x", "block": 1, "sub": "mlp.fc1"},
    ]
    assert unit_grid(rows) is None
    blocks, subs, cells = unit_grid(
        [{"unit": "whatever", "block": 7, "sub": "attn"}, {"unit": "w2", "block": 2, "sub": "mlp"}]
    )
    assert blocks == [2, 7] and subs == ["attn", "mlp"] and cells[(7, "attn")]["unit"] == "whatever"
