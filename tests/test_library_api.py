"""The library is the product: a notebook opens a workspace on a model in memory and gets the CLI's numbers."""

import json

import pytest
import transformers

import quantsense as qs
from quantsense.cli import main
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, standin_dir, sst2_validation):
    """A tiny BERT in memory, the same model saved to disk, and a small data file."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(standin_dir)
    model = tiny_model("bert", vocab_size=tokenizer.vocab_size)
    model.config.id2label = {0: "NEGATIVE", 1: "POSITIVE"}
    model.config.label2id = {"NEGATIVE": 0, "POSITIVE": 1}
    path = tmp_path_factory.mktemp("tiny-api")
    model.save_pretrained(path / "model")
    tokenizer.save_pretrained(path / "model")
    data = path / "data.tsv"
    data.write_text("\n".join(sst2_validation.read_text().splitlines()[:81]) + "\n")
    return model, tokenizer, path / "model", data


def test_public_api_is_exported():
    for name in (
        "open_workspace",
        "run_study",
        "baseline",
        "sensitivity",
        "mixed",
        "ablation",
        "allocate",
        "frontier",
        "export",
        "Plan",
        "QuantConfig",
        "GGUFFormat",
        "Budget",
        "register_task",
        "__version__",
    ):
        assert name in qs.__all__ and getattr(qs, name) is not None
    assert callable(qs.sensitivity)  # the function, not a sub-package of the same name


def test_in_memory_workspace_gives_the_cli_numbers(tiny, tmp_path, capsys):
    model, tokenizer, model_dir, data = tiny
    ws = qs.open_workspace(model, tokenizer=tokenizer, data=str(data), quiet=True)
    sens = qs.sensitivity(ws, ["int8", "int3"])
    allocation = qs.allocate(ws, qs.Budget(avg_bits=5.0), ["int3", "int8"])
    front = qs.frontier(ws, [qs.Budget(avg_bits=5.0)], ["int3", "int8"])

    out = tmp_path / "cli"
    assert (
        main(
            [
                "sensitivity",
                "--model",
                str(model_dir),
                "--data",
                str(data),
                "--bits",
                "8",
                "3",
                "--no-store",
                "--quiet",
                "--exhaustive",
                "--out",
                str(out / "sens"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "allocate",
                "--model",
                str(model_dir),
                "--data",
                str(data),
                "--avg-bits",
                "5",
                "--candidates",
                "3",
                "8",
                "--no-store",
                "--quiet",
                "--exhaustive",
                "--out",
                str(out / "alloc"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    cli_sens = json.loads((out / "sens" / "results.json").read_text())["sensitivity"]
    cli_front = json.loads((out / "alloc" / "results.json").read_text())["frontier"]

    assert ws.model_fp == json.loads((out / "sens" / "results.json").read_text())["workspace"]["model"]["fingerprint"]
    assert [(r["unit"], r["format"]) for r in cli_sens["rows"]] == [(r["unit"], r["format"]) for r in sens.rows]
    for ours, theirs in zip(sens.rows, cli_sens["rows"]):
        for key in ("kl_mean", "kl_ci_low", "kl_ci_high", "drop", "mcnemar_p", "weight_sqnr_db"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-12, abs=0), key
    assert [r["unit"] for r in sens.rankings["only@int3"]] == [r["unit"] for r in cli_sens["rankings"]["only@int3"]]
    assert qs.Plan.of(allocation.plan.as_dict()).to_json_dict() == next(iter(cli_front["plans"].values()))
    assert [r["kl_mean"] for r in front.rows] == pytest.approx([r["kl_mean"] for r in cli_front["rows"]], rel=1e-12)
    assert {r["kind"] for r in front.rows} == {"allocated", "uniform", "hand"}


def test_in_memory_model_needs_its_tokenizer(tiny):
    model, _, _, data = tiny
    with pytest.raises(qs.QuantsenseError, match="needs its tokenizer"):
        qs.open_workspace(model, data=str(data))
    with pytest.raises(qs.QuantsenseError, match="unknown option"):
        qs.open_workspace(model, tokenizer=object(), data=str(data), limt=3)


@pytest.mark.parametrize("task", ["sst2", "wikitext"])
def test_study_api_offline_on_tiny_models_both_tasks(offline_assets, task, tmp_path, capsys):
    """Without ../shared/assets: allocate and frontier via the library and via the CLI agree, for both tasks;
    block plans evaluate through 'mixed --plan'."""
    a = offline_assets
    lm = task == "wikitext"
    model, data = (a["lm_model"], a["text"]) if lm else (a["cls_model"], a["tsv"])
    settings = {"max_tokens": 1024, "context": 128, "stride": 64} if lm else {}
    flags = ["--max-tokens", "1024", "--context", "128", "--stride", "64"] if lm else []
    candidates = ["q4_0", "q8_0"] if lm else ["int3", "int8"]
    ws = qs.open_workspace(model, tokenizer=a["tokenizer"], data=str(data), task=task, quiet=True, **settings)
    assert ws.task.name == task
    front = qs.frontier(ws, [qs.Budget(avg_bits=6.0)], candidates)
    allocated = front.rows[0]
    assert allocated["kind"] == "allocated" and allocated["avg_bits"] <= 6.0 + 1e-9
    assert (
        allocated[ws.task.loss.key + "_ci_low"]
        <= allocated[ws.task.loss.key]
        <= allocated[ws.task.loss.key + "_ci_high"]
    )
    uniform = {r["plan"]: r for r in front.rows if r["kind"] == "uniform"}
    low, high = (f"uniform {c}" for c in candidates)
    assert uniform[low]["kl_mean"] > uniform[high]["kl_mean"]  # fewer bits, more KL
    assert uniform[low]["avg_bits"] < allocated["avg_bits"] + 1e-9 < uniform[high]["avg_bits"] + 1e-9

    out = tmp_path / "front"
    path = a["lm"] if lm else a["cls"]
    assert (
        main(
            [
                "frontier",
                "--task",
                task,
                "--model",
                str(path),
                "--data",
                str(data),
                *flags,
                "--budgets",
                "6",
                "--candidates",
                *candidates,
                "--no-store",
                "--quiet",
                "--exhaustive",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    cli = json.loads((out / "results.json").read_text())["frontier"]
    assert [r["plan"] for r in cli["rows"]] == [r["plan"] for r in front.rows]
    assert [r["kl_mean"] for r in cli["rows"]] == pytest.approx([r["kl_mean"] for r in front.rows], rel=1e-9)
    assert cli["plans"] == front.plans

    plan = tmp_path / "blocks.json"
    plan.write_text(json.dumps({"blocks": {"0": {"format": candidates[0]}, "2": {"format": candidates[1]}}}))
    assert (
        main(
            [
                "mixed",
                "--task",
                task,
                "--model",
                str(path),
                "--data",
                str(data),
                *flags,
                "--plan",
                str(plan),
                "--no-store",
                "--quiet",
                "--out",
                str(tmp_path / "mixed"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    rows = json.loads((tmp_path / "mixed" / "results.json").read_text())["mixed"]["rows"]
    by_plan = {r["plan"]: r for r in rows}
    assert by_plan["file:blocks.json"]["formats"] == {
        candidates[0]: len(ws.units.block_units(0)),
        candidates[1]: len(ws.units.block_units(2)),
    }
    assert len(rows) == 4  # the three strategies and the plan file


@pytest.mark.parametrize(
    "module",
    ["quantsense.quantization.plan", "quantsense.config", "quantsense.quantization.formats", "quantsense.search"],
)
def test_a_public_module_imports_first_in_a_fresh_interpreter(module):
    """Each module a user imports from works as a program's first import (a backend imported while the formats package
    initialised once made 'from quantsense.quantization.plan import Plan' a circular ImportError)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
