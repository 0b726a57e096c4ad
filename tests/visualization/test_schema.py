"""The typed reader of results.json, and the fixtures' agreement with what the producer writes."""

import pytest

from quantsense.errors import QuantsenseError
from quantsense.visualization.schema import (
    FormatInfo,
    TaskInfo,
    format_counts,
    format_info,
    plan_rows,
    widest_first,
)
from tests.visualization import fixtures


def test_fixture_format_entries_are_what_the_format_registry_writes():
    from quantsense.quantization.formats import parse_format
    from quantsense.quantization.formats.integer import QuantConfig

    scheme = QuantConfig(bits=8)
    for name in fixtures.BITS_PER_WEIGHT:
        written = parse_format(name, scheme).describe(scheme)
        entry = fixtures.format_entry(name)
        assert {k: v for k, v in written.items() if k != "glossary"} == {
            k: v for k, v in entry.items() if k != "glossary"
        }
        assert written["glossary"][0] == entry["glossary"][0]


def test_format_info_reads_the_entry_and_knows_nothing_without_one():
    results = fixtures.llm_frontier()
    q41 = format_info(results, "q4_1")
    assert (q41.family, q41.bits_per_weight, q41.code_bits, q41.variant) == ("gguf", 5.0, 4, "1")
    assert format_info(results, None) is None  # FP32: no format
    assert format_info(results, "int4") == FormatInfo("int4")  # not in this table: unknown, whatever the name
    assert format_info({}, "q4_1") == FormatInfo("q4_1")
    assert widest_first(results, ["q4_0", "f16", "nope", "q5_1"]) == ["f16", "q5_1", "q4_0", "nope"]


def test_task_info_reads_the_workspace_task_and_refuses_an_incomplete_one():
    results = fixtures.llm_blocks()
    task = TaskInfo.from_results(results)
    assert (task.name, task.head, task.loss, task.ci_high) == (
        "wikitext",
        "language-model head",
        "delta_nll",
        "delta_nll_ci_high",
    )
    assert task.plan_columns == tuple(tuple(c) for c in results["workspace"]["task"]["plan_columns"])
    assert task.loss_name == "NLL increase per token"
    del results["workspace"]["task"]["loss"]
    with pytest.raises(QuantsenseError, match="no complete workspace.task"):
        TaskInfo.from_results(results)


def test_results_without_printed_columns_get_the_metric_and_loss_columns():
    results = fixtures.classification_run()
    for key in ("sensitivity_columns", "ranking_columns", "plan_columns"):
        del results["workspace"]["task"][key]
    task = TaskInfo.from_results(results)
    assert ("drop", "accuracy drop (points)") in task.sensitivity_columns
    assert ("accuracy", "accuracy %") in task.plan_columns and ("tier", "tier") in task.ranking_columns


def test_plan_rows_carry_their_kind_and_unit_counts():
    results = fixtures.classification_run()
    rows = plan_rows(results)
    assert [r["kind"] for r in rows] == ["mixed"] * 4
    assert format_counts(rows[2]) == {"int4": 12, "int6": 12, "int8": 12}
    assert format_counts({"formats": {"a": 1, "b": 5}}) == {"b": 5, "a": 1}
    del results["mixed"]["rows"][0]["kind"]  # older results: mixed-precision rows had no kind
    assert plan_rows(results)[0]["kind"] == "mixed"
