"""Inputs that used to run code, print meaningless numbers, trace back or refuse late: each is now one line on
stderr, exit 2, before the first evaluation, and nothing already written is touched."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import transformers

from quantsense.cli import main
from tests.conftest import REPO, WORDS, refused as _refused


@pytest.fixture(scope="module")
def cls_args(offline_assets):
    return ["--model", str(offline_assets["cls"]), "--data", str(offline_assets["tsv"]), "--no-store", "--quiet"]


@pytest.fixture(scope="module")
def lm_args(offline_assets):
    return [
        "--task",
        "wikitext",
        "--model",
        str(offline_assets["lm"]),
        "--data",
        str(offline_assets["text"]),
        "--no-store",
        "--quiet",
        "--max-tokens",
        "1024",
        "--context",
        "128",
        "--stride",
        "128",
    ]


def test_a_model_folder_with_custom_code_is_refused_and_its_code_never_runs(offline_assets, tmp_path):
    """`y` on stdin must not matter: quantsense passes trust_remote_code=False and never prompts."""
    folder = tmp_path / "evil"
    shutil.copytree(offline_assets["cls"], folder)
    marker = tmp_path / "ran.txt"
    (folder / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import BertForSequenceClassification as EvilModel\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantsense.cli",
            "baseline",
            "--model",
            str(folder),
            "--data",
            str(offline_assets["tsv"]),
            "--no-store",
            "--quiet",
        ],
        input="y\ny\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists()
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "asks to run its own Python code (auto_map in config.json" in lines[0], proc.stderr
    assert "[y/N]" not in proc.stdout + proc.stderr


def test_every_loader_call_refuses_remote_code():
    """Each from_pretrained in the package passes trust_remote_code=False (the default can prompt on a terminal)."""
    import re

    calls = []
    for path in (REPO / "src" / "quantsense").rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"from_pretrained\(", text):
            depth, end = 1, match.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            calls.append((path.name, text[match.end() : end]))
    assert len(calls) >= 9
    for name, args in calls:
        assert "trust_remote_code=False" in args or "**kwargs" in args, (name, args)
    from quantsense.models.loading import _source_kwargs

    assert (
        _source_kwargs(None, True)["trust_remote_code"] is False
        and _source_kwargs("m.gguf", False)["trust_remote_code"] is False
    )


def test_a_folder_without_tokenizer_files_is_refused(capsys, offline_assets, tmp_path):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(offline_assets["cls"] / name, folder / name)
    line = _refused(
        capsys,
        ["baseline", "--model", str(folder), "--data", str(offline_assets["tsv"]), "--no-store", "--quiet"],
        "tokenizer files are missing or belong to another model",
    )
    assert "token embeddings" in line


def test_a_table_with_two_label_columns_is_refused(capsys, offline_assets, tmp_path):
    table = tmp_path / "two-labels.tsv"
    table.write_text("sentence\tlabel\tlabel\nthe film was good\t1\t0\n")
    _refused(
        capsys,
        ["baseline", "--model", str(offline_assets["cls"]), "--data", str(table), "--no-store", "--quiet"],
        "column(s) 'label' appear more than once",
    )


def test_inputs_longer_than_the_model_has_positions(capsys, offline_assets, lm_args, tmp_path):
    # the tiny Llama has 256 positions: RoPE past them would print a perplexity that means nothing
    _refused(
        capsys,
        ["baseline", *lm_args, "--context", "300", "--stride", "300"],
        "--context 300 gives inputs of 300 tokens but model",
    )
    gpt2 = tmp_path / "gpt2"
    torch.manual_seed(0)
    tokenizer = offline_assets["tokenizer"]
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=64)
    ).save_pretrained(gpt2)
    tokenizer.save_pretrained(gpt2)
    line = _refused(
        capsys,
        [
            "baseline",
            "--task",
            "wikitext",
            "--model",
            str(gpt2),
            "--data",
            str(offline_assets["text"]),
            "--no-store",
            "--quiet",
            "--max-tokens",
            "512",
            "--context",
            "256",
            "--stride",
            "256",
        ],
        "has 64 positions; use --context 64 or less",
    )
    assert "--context 256 gives inputs of 256 tokens" in line
    long_text = tmp_path / "long.tsv"  # a 600-word sentence past the classifier's 512 positions
    long_text.write_text("sentence\tlabel\n" + " ".join(WORDS[i % len(WORDS)] for i in range(600)) + "\t1\n")
    _refused(
        capsys,
        [
            "baseline",
            "--model",
            str(offline_assets["cls"]),
            "--data",
            str(long_text),
            "--no-store",
            "--quiet",
            "--max-length",
            "2000",
        ],
        "--max-length 2000 gives inputs of 602 tokens but model",
    )


def test_plan_files_that_cannot_be_read_are_refused(capsys, cls_args, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"units": ' + "[" * 200_000 + "]" * 200_000 + "}")
    _refused(capsys, ["mixed", "--plan", str(deep), *cls_args], "is nested too deeply to be read as JSON")
    _refused(capsys, ["mixed", "--plan", str(tmp_path), *cls_args], f"{tmp_path} is a folder, not a JSON file")


def test_a_plan_whose_group_size_does_not_divide_a_layer_is_refused_naming_the_file(capsys, cls_args, tmp_path):
    plan = tmp_path / "g7.json"
    plan.write_text(json.dumps({"blocks": {"0": {"bits": 4, "granularity": "per_group", "group_size": 7}}}))
    for argv in (["export", str(plan), "--out", str(tmp_path / "e")], ["mixed", "--plan", str(plan)]):
        line = _refused(
            capsys, [*argv, *cls_args], f"plan file {plan}: group size 7 does not divide the 32 input features"
        )
        assert "--group-size" not in line  # no flag was given: the plan file is to blame
    assert not (tmp_path / "e").exists()


def test_out_under_a_file_is_refused_before_the_evaluation(capsys, cls_args, tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    _refused(
        capsys,
        ["baseline", *cls_args, "--out", str(existing / "results")],
        "is a file, so nothing can be written under it",
    )
    assert existing.read_text() == "keep me"


def test_report_on_a_damaged_results_file(capsys, tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"something": "else"}))
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a quantsense results file (no provenance, workspace, baseline)" in capsys.readouterr().err
    (tmp_path / "results.json").write_text(json.dumps({"provenance": {}, "workspace": {}, "baseline": {}}))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "re-run the study" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["--seed", "-1"], "argument --seed: expected a non-negative integer, got -1"),
        (["--formats", "int²"], "unknown format 'int²'; use bits 2..8"),
    ],
)
def test_flags(capsys, cls_args, argv, expect):
    code = main(["sensitivity", *cls_args, *argv])
    err = capsys.readouterr().err
    assert code == 2 and expect in err and len(err.strip().splitlines()) == 1, err


def test_calibration_files_are_checked_before_any_evaluation(capsys, cls_args, offline_assets, tmp_path):
    missing = tmp_path / "nope.tsv"
    line = _refused(
        capsys, ["proxies", *cls_args, "--calibration-data", str(missing)], f"data file {missing} does not exist"
    )
    assert "--calibration-data" in line and "--data" not in line.replace("--calibration-data", "")
    _refused(
        capsys,
        ["run", *cls_args, "--calibration-data", str(offline_assets["tsv"])],
        "has only 0 examples not in the evaluation set; need 128",
    )


def test_more_ray_workers_than_this_machine_has_cpus_are_refused(capsys, cls_args):
    pytest.importorskip("ray")
    import os

    cpus = len(os.sched_getaffinity(0))
    _refused(
        capsys,
        ["sensitivity", *cls_args, "--executor", "ray", "--workers", str(cpus + 48)],
        f"--workers {cpus + 48} needs {cpus + 48} CPUs but this machine has {cpus}; use --workers {cpus} or less",
    )


def test_auto_map_in_the_tokenizer_config_is_refused_too_and_native_types_get_a_fix(capsys, offline_assets, tmp_path):
    folder = tmp_path / "tok-code"
    shutil.copytree(offline_assets["cls"], folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    line = _refused(
        capsys,
        ["baseline", "--model", str(folder), "--data", str(offline_assets["tsv"]), "--no-store", "--quiet"],
        "asks to run its own Python code (auto_map in tokenizer_config.json: AutoTokenizer)",
    )
    assert "without auto_map in tokenizer_config.json" in line
    folder = tmp_path / "native"
    shutil.copytree(offline_assets["cls"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    _refused(
        capsys,
        ["baseline", "--model", str(folder), "--data", str(offline_assets["tsv"]), "--no-store", "--quiet"],
        "its model_type 'bert' is built into transformers, so remove auto_map from config.json",
    )


def test_a_jsonl_row_with_a_repeated_key_is_refused(capsys, offline_assets, tmp_path):
    table = tmp_path / "rows.jsonl"
    table.write_text('{"sentence": "the film was good", "label": 1}\n{"sentence": "bad", "label": 0, "label": 1}\n')
    _refused(
        capsys,
        ["baseline", "--model", str(offline_assets["cls"]), "--data", str(table), "--no-store", "--quiet"],
        f"data file {table}, line 2: key 'label' appears more than once",
    )


def test_report_that_cannot_be_written_is_one_line(capsys, tmp_path):
    from tests.visualization.fixtures import classification_run

    (tmp_path / "results.json").write_text(json.dumps(classification_run()))
    (tmp_path / "report.html").mkdir()  # something in the way (as root, a read-only folder would not stop a write)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'report.html'}" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
