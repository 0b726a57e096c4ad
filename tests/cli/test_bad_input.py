"""Bad input costs nothing: exit 2, one line naming the problem and the fix, no traceback, checked before the
first evaluation (nothing computed, nothing written), and nothing already written is changed."""

import json

import pytest

from quantsense.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory, sst2_validation):
    path = tmp_path_factory.mktemp("bad-input") / "d.tsv"
    path.write_text("\n".join(sst2_validation.read_text().splitlines()[:25]) + "\n")
    return path


def _fails_before_computing(capsys, argv, expect: str) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert expect in lines[0], lines[0]
    assert "FP32 accuracy" not in captured.out and "evaluation(s) computed" not in captured.out  # nothing was evaluated
    return lines[0]


def test_group_size_is_checked_against_every_layer(capsys, tiny_model_dir, data):
    _fails_before_computing(
        capsys,
        [
            "sensitivity",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--no-store",
            "--quiet",
            "--weight-granularity",
            "per_group",
            "--group-size",
            "5",
        ],
        "group size 5 does not divide the 32 input features of bert.",
    )


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["allocate", "--avg-bits", "-1"], "expected a positive number"),
        (["allocate", "--avg-bits", "nan"], "expected a positive number"),
        (
            ["allocate", "--avg-bits", "1.5", "--candidates", "4", "8"],
            "impossible with candidates int4 int8: the smallest feasible is --avg-bits 4.875",
        ),
        (["allocate", "--max-size", "1kB", "--candidates", "4"], "the smallest feasible is --max-size"),
        (["allocate", "--avg-bits", "5", "--tie", "(query"], "--tie '(query' is not a valid regular expression"),
        (["allocate", "--avg-bits", "5", "--candidates", "q7_k"], "unknown format 'q7_k'"),
        (["allocate", "--blocks", "0", "--avg-bits", "5"], "unrecognized arguments: --blocks 0"),  # no prefix matching
        (["sensitivity", "--blocks", "0", "9"], "block index 9 is out of range: the model has blocks 0..2"),
        (["ablation", "--block", "3"], "block index 3 is out of range"),
    ],
)
def test_inputs_checked_before_any_evaluation(capsys, tiny_model_dir, data, argv, expect):
    _fails_before_computing(
        capsys, [*argv, "--model", str(tiny_model_dir), "--data", str(data), "--no-store", "--quiet"], expect
    )


def test_plan_errors_name_the_file_and_the_unit_or_block(capsys, tiny_model_dir, data, tmp_path):
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--no-store", "--quiet"]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"units": {"bert.encoder.layer.0.attention.self.qeury": {"bits": 4}}}))
    line = _fails_before_computing(capsys, ["mixed", "--plan", str(plan), *common], f"plan file {plan}")
    assert "unknown unit 'bert.encoder.layer.0.attention.self.qeury'" in line
    plan.write_text(json.dumps({"blocks": {"7": {"format": "q4_0"}}}))
    line = _fails_before_computing(
        capsys, ["export", str(plan), "--out", str(tmp_path / "e"), *common], f"plan file {plan}"
    )
    assert "block index 7 is out of range" in line
    plan.write_text(json.dumps({"blocks": {"1": {"bits": 4, "symetric": True}}}))
    _fails_before_computing(capsys, ["mixed", "--plan", str(plan), *common], "block 1: unknown key(s) symetric")


def test_out_that_is_a_file_is_refused_and_left_alone(capsys, tiny_model_dir, data, tmp_path):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    for command in (["baseline"], ["export", str(tmp_path / "plan.json")]):
        _fails_before_computing(
            capsys,
            [*command, "--model", str(tiny_model_dir), "--data", str(data), "--no-store", "--out", str(existing)],
            "is an existing file",
        )
    assert existing.read_text() == "keep me"


def test_wikitext_budgets_that_score_too_few_tokens(capsys, tiny_model_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 50)
    common = ["baseline", "--task", "wikitext", "--model", str(tiny_model_dir), "--data", str(text), "--no-store"]
    _fails_before_computing(
        capsys, [*common, "--max-tokens", "1"], "--max-tokens 1 scores fewer tokens than one --context 1024"
    )
    _fails_before_computing(capsys, [*common, "--context", "1", "--stride", "1"], "--context 1 is too short")


def test_a_classifier_is_refused_for_the_language_model_task(capsys, tiny_model_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 400)
    _fails_before_computing(
        capsys,
        [
            "baseline",
            "--task",
            "wikitext",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(text),
            "--no-store",
            "--max-tokens",
            "256",
            "--context",
            "128",
            "--stride",
            "64",
        ],
        "has no trained language-model head",
    )


def test_duplicates_are_evaluated_and_ranked_once(capsys, tiny_model_dir, data, tmp_path):
    out = tmp_path / "dup"
    assert (
        main(
            [
                "sensitivity",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(data),
                "--no-store",
                "--quiet",
                "--bits",
                "8",
                "8",
                "int8",
                "--blocks",
                "0",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    sens = json.loads((out / "results.json").read_text())["sensitivity"]
    assert sens["formats"] == ["int8"] and [r["unit"] for r in sens["rows"]] == ["block 0"]
    assert list(sens["rankings"]) == ["only@int8"]


def test_plot_never_overwrites_silently(capsys, tiny_model_dir, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sensitivity.png").write_bytes(b"mine")
    _fails_before_computing(
        capsys,
        ["plot", "--model", str(tiny_model_dir), "--data", str(data), "--no-store", "--quiet"],
        "sensitivity.png already exists here; pass --out DIR",
    )
    assert (tmp_path / "sensitivity.png").read_bytes() == b"mine"


def test_valid_formats_run(capsys, tiny_model_dir, data):
    """The control: the same flags with valid values do run (so the failures above are about the values)."""
    assert (
        main(
            [
                "sensitivity",
                "--model",
                str(tiny_model_dir),
                "--data",
                str(data),
                "--no-store",
                "--quiet",
                "--formats",
                "q4_0",
                "4",
                "--blocks",
                "0",
            ]
        )
        == 0
    )
    assert "FP32 accuracy" in capsys.readouterr().out


def test_report_rebuilds_the_page_from_results_json(capsys, tmp_path):
    from tests.visualization.fixtures import classification_run

    (tmp_path / "results.json").write_text(json.dumps(classification_run()))
    assert main(["report", str(tmp_path), "--tolerance", "0.5"]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "What to ship" in page and "within your tolerance of 0.5" in page
    code = main(["report", str(tmp_path / "missing")])
    assert code == 2 and "no results.json in" in capsys.readouterr().err
