"""Printed text and summary.md: plan lines per format and layer kind, sentences and columns from the results."""

import re
from collections import Counter

from quantsense.visualization.summary import (
    ablation_text,
    baseline_text,
    block_ranking_text,
    frontier_text,
    plans_text,
    sensitivity_text,
    summary_markdown,
)
from tests.visualization import fixtures
from tests.visualization.fixtures import llm_frontier


def _parse_counts(text: str) -> Counter:
    return Counter({fmt: int(n) for fmt, n in re.findall(r"(\w+) x(\d+)", text)})


def test_linear_frontier_lines_count_every_unit_by_format_and_by_layer_kind():
    results = llm_frontier()
    text = frontier_text(results)
    groups = results["frontier"]["groups"]
    assert results["frontier"]["choices"]
    for name, choice in results["frontier"]["choices"].items():
        line = next(x for x in text.splitlines() if x.startswith(f"{name}: "))
        assert _parse_counts(line[len(name) + 2 :]) == Counter(choice.values())
        kinds_line = text.splitlines()[text.splitlines().index(line) + 1]
        assert kinds_line.startswith("  by layer kind: ")
        for part in kinds_line[len("  by layer kind: ") :].split("; "):
            kind, counts = part.split(" ", 1)
            expected = Counter(fmt for unit, fmt in choice.items() if groups[unit]["layer_kind"] == kind)
            assert _parse_counts(counts) == expected and sum(expected.values()) == 30


def test_layer_kinds_come_from_the_frontier_groups_not_the_unit_names():
    results = llm_frontier()
    fr = results["frontier"]
    for i, info in enumerate(fr["groups"].values()):
        info["layer_kind"] = "tied[q|k]" if i % 2 else "custom_kind"
    name, choice = next(iter(fr["choices"].items()))
    lines = frontier_text(results).splitlines()
    kinds_line = lines[lines.index(next(x for x in lines if x.startswith(f"{name}: "))) + 1]
    kinds = dict(part.split(" ", 1) for part in kinds_line[len("  by layer kind: ") :].split("; "))
    assert sorted(kinds) == ["custom_kind", "tied[q|k]"]
    assert sum(sum(_parse_counts(c).values()) for c in kinds.values()) == len(choice)
    del fr["groups"]  # results written before groups were recorded: no kind line rather than a guess from names
    assert "by layer kind" not in frontier_text(results)


def test_block_frontier_lists_each_block_and_has_no_kind_line():
    results = llm_frontier()
    fr = results["frontier"]
    fr["unit"] = "block"
    fr["choices"] = {"allocated@5 bits/weight": {f"block {b}": ("q8_0" if b == 0 else "q5_0") for b in range(3)}}
    fr["groups"] = {f"block {b}": {"block": b, "layer_kind": "block"} for b in range(3)}
    text = frontier_text(results)
    assert "allocated@5 bits/weight: block 0: q8_0, block 1: q5_0, block 2: q5_0" in text
    assert "by layer kind" not in text


def test_sentences_are_the_ones_the_results_carry():
    results = fixtures.classification_run()
    results["baseline"]["summary"] = "FP32 accuracy: as the producer says"
    results["ablation"]["summary"] = "an effect sentence from the producer"
    assert baseline_text(results) == "FP32 accuracy: as the producer says"
    assert ablation_text(results) == (
        "Ablation: only block 5 (least sensitive) at int4, all others FP32: an effect sentence from the producer"
    )


def test_tables_use_the_columns_the_results_carry_for_an_unregistered_task():
    results = fixtures.classification_run()
    task = results["workspace"]["task"]
    task["name"] = "made_up_task"
    task["sensitivity_columns"] = [["unit", "unit"], ["accuracy", "my accuracy"]]
    task["ranking_columns"] = [["rank", "my rank"], ["unit", "unit"]]
    task["plan_columns"] = [["plan", "my plan"], ["drop", "my drop"]]
    text = sensitivity_text(results)
    assert "| unit | my accuracy | KL recovered | loss recovered |" in text and "| my rank | unit |" in text
    assert plans_text(results, results["mixed"]["rows"]).splitlines()[0] == "| my plan | my drop | formats |"
    markdown = summary_markdown(results)
    assert "task made_up_task" in markdown and "(872 examples)" in markdown
    assert "FP32 accuracy: 89.45 % (780/872)" in markdown


def test_summary_glossary_has_the_tasks_terms_and_one_line_per_format_family():
    markdown = summary_markdown(fixtures.llm_frontier())
    glossary = markdown.split("## Glossary", 1)[1]
    assert glossary.count(f"**{fixtures.GGUF_GLOSSARY[0]}**") == 1 and fixtures.INT_GLOSSARY[0] not in glossary
    assert "**dNLL**" in glossary and "McNemar" not in glossary
    assert "first 4096 tokens, context 1024, stride 512" in markdown


def test_block_ranking_is_the_narrowest_format_by_the_table():
    results = fixtures.llm_blocks()
    assert block_ranking_text(results).startswith("Block ranking (only@q4_0), most sensitive first: ")
    results["formats"]["q8_0"]["bits_per_weight"] = 2.0  # the table, not the name, says which is narrowest
    assert block_ranking_text(results).startswith("Block ranking (only@q8_0)")


def test_summary_names_the_integer_grid_only_when_an_int_format_was_measured():
    with_int = summary_markdown(fixtures.classification_run())
    assert "; int formats use the grid symmetric per-channel." in with_int
    gguf_only = fixtures.llm_frontier()
    assert "int formats use the grid" not in summary_markdown(gguf_only)
    for entry in gguf_only["formats"].values():
        del entry["takes_scheme"]  # results written before the registry said: the grid is named, as it was
    assert "; int formats use the grid symmetric per-channel." in summary_markdown(gguf_only)


def test_only_the_integer_family_takes_the_grid():
    from quantsense.quantization.formats import parse_format

    assert parse_format("int4").describe()["takes_scheme"] is True
    assert not any(parse_format(name).describe()["takes_scheme"] for name in ("q4_0", "q4_K", "ort-int8"))
