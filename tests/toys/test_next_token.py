"""The toy task, registered by its test alone, through baseline (checked against a plain forward pass), sensitivity,
allocation, frontier and the report, from the API and from the command line (its flags come from the registry)."""

import json

import numpy as np
import pytest
import torch

import quantsense as qs
from quantsense.cli import main
from quantsense.tasks import TASKS, register_task
from quantsense.visualization.results_folder import write_results_folder
from tests.toys.next_token import NextTokenAccuracy

CONTEXT, MAX_TOKENS = 48, 240


@pytest.fixture
def next_token():
    register_task(NextTokenAccuracy)
    yield NextTokenAccuracy
    TASKS.pop(NextTokenAccuracy.name)


def _plain_accuracy(model, tokenizer, text: str) -> float:
    """Next-token accuracy by a plain loop: windows of CONTEXT tokens, each scoring all but its first token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
    hits = []
    with torch.no_grad():
        for begin in range(0, len(ids) - 1, CONTEXT):
            window = torch.tensor([ids[begin : begin + CONTEXT]])
            if window.shape[1] < 2:
                continue
            predicted = model(window).logits[0, :-1].argmax(dim=-1)
            hits += (predicted == window[0, 1:]).tolist()
    return 100 * float(np.mean(hits))


def test_every_phase_and_the_report(next_token, offline_assets, tmp_path):
    model, tokenizer = offline_assets["lm_model"], offline_assets["tokenizer"]
    ws = qs.open_workspace(
        model,
        tokenizer=tokenizer,
        task="next-token",
        data=str(offline_assets["text"]),
        quiet=True,
        device="cpu",
        max_tokens=MAX_TOKENS,
        context=CONTEXT,
    )
    base = qs.baseline(ws)
    expected = _plain_accuracy(model, tokenizer, offline_assets["text"].read_text())
    assert abs(base["next_token_accuracy"] - expected) < 1e-9 and base["summary"].startswith("FP32 next-token accuracy")
    sens = qs.sensitivity(ws, ["int8", "int4"])
    kl = {(r["unit"], r["format"]): r["kl_mean"] for r in sens.rows}
    assert all(kl[(u, "int4")] > kl[(u, "int8")] for u, f in kl if f == "int8")
    assert all(abs(r["accuracy_drop"]) < 5 for r in sens.rows if r["format"] == "int8")
    front = qs.frontier(ws, [6.0], ["int4", "int8"])
    allocated = next(r for r in front.rows if r["kind"] == "allocated")
    assert allocated["avg_bits"] <= 6.0 + 1e-9 and "accuracy_drop_ci_low" in allocated
    result = qs.StudyResult(
        {"command": "test", "created": "", "versions": {}, "git": None},
        ws.describe(),
        base,
        sensitivity=sens,
        frontier=front,
        formats=ws.format_table(),
    )
    write_results_folder(tmp_path / "out", result.to_dict())
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["workspace"]["task"]["name"] == "next-token"
    html = (tmp_path / "out" / "report.html").read_text()
    assert "next-token accuracy drop (points)" in html and "share of scored tokens whose most likely" in html


def test_from_the_command_line(next_token, offline_assets, tmp_path, capsys):
    args = [
        "baseline",
        "--task",
        "next-token",
        "--model",
        str(offline_assets["lm"]),
        "--data",
        str(offline_assets["text"]),
        "--max-tokens",
        str(MAX_TOKENS),
        "--context",
        str(CONTEXT),
        "--no-store",
        "--quiet",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    expected = _plain_accuracy(
        offline_assets["lm_model"], offline_assets["tokenizer"], offline_assets["text"].read_text()
    )
    assert f"FP32 next-token accuracy: {expected:.2f} %" in capsys.readouterr().out
    assert main([*args, "--stride", "8"]) == 2  # wikitext's setting, not this task's: refused in one line
    assert "task next-token takes no setting stride" in capsys.readouterr().err
