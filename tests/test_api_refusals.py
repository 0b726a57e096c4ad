"""The library refuses what the command line refuses, with a QuantsenseError of one line, before any evaluation;
and the forms its own docstrings show (budgets as numbers, a plan file path) work."""

import json

import numpy as np
import pytest

import quantsense as qs
from quantsense import study
from quantsense.errors import QuantsenseError


@pytest.fixture(scope="module")
def ws(offline_assets):
    workspace = qs.open_workspace(
        offline_assets["cls_model"], tokenizer=offline_assets["tokenizer"], data=str(offline_assets["tsv"]), quiet=True
    )
    yield workspace
    workspace.close()


def _refused(call, expect: str) -> None:
    with pytest.raises(QuantsenseError) as info:
        call()
    assert expect in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "call, expect",
    [
        (
            lambda ws: qs.sensitivity(ws, [4.5]),
            "a format is a name or a number of bits (e.g. 'int4', 4, 'q4_0'), got 4.5",
        ),
        (lambda ws: qs.sensitivity(ws, [None]), "got None"),
        (lambda ws: qs.sensitivity(ws, blocks=["0"]), "a block index is an integer 0..2, got '0'"),
        (lambda ws: qs.mixed(ws, [0, 1]), "a block ranking lists every block 0..2 exactly once"),
        (lambda ws: qs.mixed(ws, [0, 0, 1]), "got [0, 0, 1]"),
        (lambda ws: qs.ablation(ws, [2, 1]), "a block ranking lists every block 0..2 exactly once"),
        (lambda ws: qs.allocate(ws, "4.5", ["int4", "int8"]), "a budget is a number of bits per weight"),
        (lambda ws: qs.allocate(ws, 1.0, ["int4", "int8"]), "the smallest feasible is --avg-bits"),
        (
            lambda ws: qs.frontier(ws, [6.0], ["int4", "int8"], unit="linear", tie="(query"),
            "is not a valid regular expression",
        ),
        (lambda ws: qs.export(ws, "missing-plan.json", "out"), "plan file missing-plan.json does not exist"),
        (lambda ws: qs.export(ws, qs.Plan(), "out", target="tflite"), "unknown export format 'tflite'"),
        (
            lambda ws: qs.allocate(ws, 4.5, "int4"),
            "formats are a list of format names, e.g. ['q4_0', 'q8_0'], got 'int4'",
        ),
        (lambda ws: qs.sensitivity(ws, "int8"), "write ['int8'] for one"),
    ],
)
def test_api_refuses_before_any_evaluation(ws, call, expect):
    before = ws.engine.stats.computed
    _refused(lambda: call(ws), expect)
    assert ws.engine.stats.computed == before


@pytest.mark.parametrize(
    "call, expect",
    [
        (
            lambda: qs.Budget(avg_bits="4"),
            "avg_bits (--avg-bits) must be a positive number of bits per weight, got '4'",
        ),
        (lambda: qs.Budget(max_bytes=-5), "max_bytes (--max-size) must be a positive number of bytes, got -5"),
        (lambda: qs.parse_format("int²"), "unknown format 'int²'"),
        (lambda: qs.parse_format(4.5), "a format is a name or a number of bits"),
        (lambda: qs.Budget(avg_bits=4.5, preset="nonsense"), "unknown llama.cpp preset 'nonsense'"),
        (
            lambda: qs.Budget(avg_bits=4.5, preset="Q4_K_M"),
            "a budget of preset Q4_K_M is computed on a workspace: quantsense.preset_budget(ws, 'Q4_K_M')",
        ),
    ],
)
def test_values_are_checked_where_they_are_made(call, expect):
    _refused(call, expect)


@pytest.mark.parametrize(
    "option, expect",
    [
        ({"scheme": "int4"}, "scheme must be a QuantConfig"),
        ({"seed": "x"}, "seed (--seed) must be a non-negative integer, got 'x'"),
        ({"seed": -1}, "seed (--seed) must be a non-negative integer, got -1"),
        ({"batch_tokens": 0}, "batch_tokens (--batch-tokens) must be a positive integer, got 0"),
        ({"max_length": 0}, "max_length (--max-length) must be a positive integer, got 0"),
        ({"workers": 0}, "workers (--workers) must be a positive integer, got 0"),
        ({"executor": "dask"}, "executor (--executor) must be one of local, ray, got 'dask'"),
        ({"imatrix": 123}, "imatrix (--imatrix) is the path of an importance matrix file (a str or Path), got 123"),
        ({"imatrix": ["imatrix.gguf"]}, "got ['imatrix.gguf']"),
        ({"imatrix": b"imatrix.gguf"}, "got b'imatrix.gguf'"),
    ],
)
def test_workspace_options_are_checked_before_the_model_loads(offline_assets, option, expect):
    _refused(lambda: qs.open_workspace(str(offline_assets["cls"]), data=str(offline_assets["tsv"]), **option), expect)


def test_the_documented_forms_work(ws, tmp_path):
    """Budgets as plain numbers (study.py's own docstring), rankings as numpy arrays, plans as file paths."""
    allocation = qs.allocate(ws, 6.0, ["int4", "int8"])
    assert allocation.plan.format_counts() and allocation.avg_bits <= 6.0
    front = qs.frontier(ws, [6.0], ["int4", "int8"])
    assert front.rows[0]["plan"] == "allocated@6 bits/weight" and front.rows[0]["avg_bits"] <= 6.0
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(allocation.plan.to_json_dict()))
    assert study.as_plan(ws, str(plan_file)) == allocation.plan
    ranking = np.array(qs.sensitivity(ws, ["int4"]).block_ranking())
    assert len(qs.mixed(ws, ranking).rows) == 3


def test_token_ids_beyond_the_embedding_are_refused(offline_assets):
    from tests.conftest import tiny_model

    small = tiny_model("bert", vocab_size=len(offline_assets["tokenizer"]) - 10)
    _refused(
        lambda: qs.open_workspace(
            small, tokenizer=offline_assets["tokenizer"], data=str(offline_assets["tsv"]), quiet=True
        ),
        "token embeddings: the tokenizer belongs to another model",
    )


def test_export_checks_its_output_before_any_work(ws, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    _refused(lambda: qs.export(ws, qs.Plan(), blocker / "out"), "is a file, so nothing can be written under it")
    assert blocker.read_text() == "keep me"


def test_numpy_numbers_are_numbers(offline_assets):
    ws = qs.open_workspace(
        offline_assets["cls_model"],
        tokenizer=offline_assets["tokenizer"],
        data=str(offline_assets["tsv"]),
        quiet=True,
        batch_tokens=np.int64(512),
        seed=np.int64(3),
    )
    assert ws.options.settings["batch_tokens"] == 512 and ws.task.batch_tokens == 512
    assert qs.Budget(avg_bits=np.float64(4.5)).avg_bits == 4.5


def test_positions_of_roberta_style_embeddings_exclude_the_padding_offset():
    from quantsense.models.loading import max_positions
    from tests.conftest import tiny_model

    roberta = tiny_model("roberta")  # 512 position rows, padding index 1: positions 2..511
    assert max_positions(roberta) == 510
    assert max_positions(tiny_model("bert")) == 512 and max_positions(tiny_model("gpt2")) == 64


@pytest.mark.parametrize(
    "settings, expect",
    [
        (
            {"context": 64},
            "task sst2 takes no setting context (context belongs to task wikitext); its settings: limit (--limit), "
            "max_length (--max-length), batch_tokens (--batch-tokens)",
        ),
        ({"contxt": 64}, "task sst2 takes no setting contxt (no task takes contxt)"),
    ],
)
def test_a_setting_the_task_does_not_take_is_an_error(settings, expect):
    with pytest.raises(QuantsenseError) as info:
        qs.StudyOptions(task="sst2", settings=settings)
    assert expect in str(info.value)


def test_a_grid_torchao_cannot_store_is_refused_before_any_evaluation(ws, tmp_path):
    plan = qs.Plan.of({ws.units.linear_units()[0]: qs.QuantConfig(bits=4, granularity="per_tensor")})
    before = ws.engine.stats.computed
    _refused(
        lambda: qs.run_export(ws, plan, tmp_path / "out"),
        "torchao's IntxWeightOnlyConfig has no per-tensor granularity",
    )
    assert ws.engine.stats.computed == before


def test_a_bad_grid_for_the_strategies_is_refused_before_the_baseline(offline_assets):
    ws = qs.open_workspace(
        offline_assets["cls_model"],
        tokenizer=offline_assets["tokenizer"],
        data=str(offline_assets["tsv"]),
        quiet=True,
        scheme=qs.QuantConfig(bits=8, granularity="per_group", group_size=48),
    )
    _refused(lambda: qs.run_study(ws, phases=("baseline", "mixed")), "group size 48 does not divide")
    _refused(lambda: qs.run_study(ws, qs.StudyRequest(phases=("baseline", "mixed"))), "group size 48 does not divide")
    _refused(lambda: qs.run_study(ws, phase=("baseline",)), "unknown setting(s) phase; see quantsense.StudyRequest")
    assert ws.engine.stats.computed == 0 and ws.engine.evaluator._reference is None


@pytest.mark.parametrize("views, rank_by", [(("all_but",), "kl"), (("only",), "loss")])
def test_the_strategies_rank_blocks_by_kl_alone_whatever_the_sweep(ws, views, rank_by):
    """The reference ranking is each block alone at the ranking format, by mean KL: a sweep of another view or ranked
    by the loss is not reused for it (an all_but sweep has no such ranking at all)."""
    result = qs.run_study(ws, views=views, rank_by=rank_by)
    assert result.ranking == {"format": "int4", "blocks": qs.block_ranking(ws, "int4")}
    assert result.ablation["block"] == result.ranking["blocks"][-1]


def test_a_preset_budget_belongs_to_the_model_it_was_computed_on(offline_assets, smollm2):
    """A preset's budget is that model's bits per weight: another workspace refuses it before any evaluation."""
    lm = dict(data=str(offline_assets["text"]), task="wikitext", max_tokens=1024, context=128, stride=128, quiet=True)
    tiny = qs.open_workspace(str(offline_assets["lm"]), **lm)
    smol = qs.open_workspace(str(smollm2), **lm)
    budget = qs.preset_budget(smol, "Q8_0")
    assert budget.preset == "Q8_0" and budget.model == smol.model_fp
    _refused(
        lambda: qs.frontier(tiny, [budget], ["q4_0", "q8_0"]), "this Q8_0 size budget was computed on another model"
    )
    assert tiny.engine.stats.computed == 0
