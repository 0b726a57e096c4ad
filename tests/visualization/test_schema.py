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


def test_results_carry_their_schema_version_and_older_ones_are_migrated_once():
    from quantsense.results import SCHEMA_VERSION, StudyResult
    from quantsense.visualization.schema import effect_summary, migrate

    written = StudyResult({"command": "t"}, {}, {"accuracy": 90.0}).to_dict()
    assert written["schema_version"] == SCHEMA_VERSION == 1 and list(written)[0] == "schema_version"
    old = fixtures.classification_run()  # written before versions: no schema_version
    for key in ("sensitivity_columns", "ranking_columns", "plan_columns"):
        del old["workspace"]["task"][key]
    del old["mixed"]["rows"][0]["kind"]
    del old["baseline"]["summary"]
    before = repr(old)
    new = migrate(old)
    assert repr(old) == before and new is not old  # the caller's dict is left as it was
    assert new["schema_version"] == 1 and migrate(new) is new  # current results pass through untouched
    task = new["workspace"]["task"]
    assert ["accuracy", "accuracy %"] in task["plan_columns"] and ["tier", "tier"] in task["ranking_columns"]
    assert new["mixed"]["rows"][0]["kind"] == "mixed"
    assert new["baseline"]["summary"] == f"FP32 accuracy %: {old['baseline']['accuracy']}"
    abl = {"drop": 0.1, "drop_ci_low": -0.2, "drop_ci_high": 0.4}
    assert effect_summary(migrate({**old, "ablation": abl})["ablation"], TaskInfo.from_results(new)) == (
        "accuracy drop (points) 0.1 [95% CI -0.2, 0.4]"
    )


@pytest.mark.parametrize("version", [2, "1", -1, True])
def test_results_from_a_newer_or_broken_schema_are_refused(version, tmp_path):
    import json

    from quantsense.visualization.html_report import rebuild_report
    from quantsense.visualization.schema import migrate

    results = {**fixtures.llm_blocks(), "schema_version": version}
    with pytest.raises(QuantsenseError, match="newer quantsense" if version == 2 else "not a version number"):
        migrate(results)
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(
        QuantsenseError, match="results.json: these results were written by a newer" if version == 2 else "results.json"
    ):
        rebuild_report(tmp_path)
    assert not (tmp_path / "report.html").exists()
