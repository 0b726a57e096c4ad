"""Inputs that used to crash after the work was done, give intervals of zero width, or be refused only after evaluations
(issue #29): a plan that quantizes nothing is FP32's row; too little data for an interval, a model llama.cpp has no names
for, an imatrix of another model, a candidate no row can hold are refused before the first evaluation; strategies and
uniform plans that no row can hold are skipped with a line saying so."""

import json
import os
import subprocess
import sys

import pytest

from quantsense.cli import main
from tests.conftest import REPO, WIKI, refused as _refused, save_tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def k_lm(tmp_path_factory):
    """A 2-block Llama whose ffn_down rows (256) hold ggml's 256-weight super-blocks and whose other rows (64) do not,
    as SmolLM2's 576-wide rows do not; its token embedding is tied to the output."""
    path = tmp_path_factory.mktemp("k-lm")
    save_tiny_llama(path, tiny_tokenizer(), layers=2, intermediate=256, tied=True)
    return path


def _lm(model, text, tokens: int = 1024) -> list[str]:
    return [
        "--task",
        "wikitext",
        "--model",
        str(model),
        "--data",
        str(text),
        "--no-store",
        "--quiet",
        "--max-tokens",
        str(tokens),
        "--context",
        "128",
        "--stride",
        "128",
    ]


def test_a_plan_that_quantizes_nothing_is_measured_as_fp32(offline_assets, tmp_path, capsys):
    lm = _lm(offline_assets["lm"], offline_assets["text"])
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"version": 1, "units": {}}))
    out = tmp_path / "mixed"
    assert main(["mixed", "--plan", str(empty), *lm, "--out", str(out)]) == 0, capsys.readouterr().err
    row = next(
        r for r in json.loads((out / "results.json").read_text())["mixed"]["rows"] if r["plan"] == "file:empty.json"
    )
    assert row["kl_mean"] == 0 and row["ppl_ratio"] == 1 and row["delta_nll"] == 0 and row["top1_agreement"] == 100
    assert row["avg_bits"] == 32
    for budget in (["--avg-bits", "32"], ["--max-size", "1GB"]):  # every group can stay FP32: the plan is empty
        out = tmp_path / budget[0]
        assert main(["allocate", *budget, "--candidates", "q4_0", "q8_0", *lm, "--out", str(out)]) == 0, (
            capsys.readouterr().err
        )
        rows = json.loads((out / "results.json").read_text())["frontier"]["rows"]
        allocated = next(r for r in rows if r["kind"] == "allocated")
        assert allocated["kl_mean"] == 0 and allocated["avg_bits"] == 32


def test_candidates_that_only_some_rows_hold_allocate_and_skip_the_plans_no_row_holds(
    k_lm, offline_assets, tmp_path, capsys
):
    out = tmp_path / "alloc"
    code = main(
        [
            "allocate",
            "--unit",
            "linear",
            "--candidates",
            "q4_K",
            "q4_0",
            "q8_0",
            "--avg-bits",
            "6",
            *_lm(k_lm, offline_assets["text"]),
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "Not measured: uniform q4_K, since q4_K needs rows that are multiples of 256 weights" in printed.out
    front = json.loads((out / "results.json").read_text())["frontier"]
    assert "uniform q4_K" in front["skipped"] and "uniform q4_0" not in front["skipped"]
    hand = [r for r in front["rows"] if r["kind"] == "hand"]
    assert len(hand) == 3 and all(r["avg_bits"] < 32 for r in hand)  # ranked at q4_0, whose strategies every row holds
    chosen = front["plans"]["allocated@6 bits/weight"]["units"]
    assert all(f["format"] != "q4_K" or "down_proj" in name for name, f in chosen.items())


def test_a_budget_that_units_no_candidate_holds_make_impossible_names_them(k_lm, offline_assets, capsys):
    # q4_K holds the 256-wide ffn_down rows only: no whole block can take it, so every block would stay FP32
    line = _refused(
        capsys,
        ["allocate", "--candidates", "q4_K", "--avg-bits", "5", *_lm(k_lm, offline_assets["text"])],
        "budget 5 bits/weight is impossible with candidates q4_K: the smallest feasible is --avg-bits 32.000",
    )
    assert (
        "2 of 2 units (block 0, block 1) hold none of the candidates and stay FP32" in line and "--unit linear" in line
    )


def test_a_candidate_no_row_holds_is_refused(offline_assets, capsys):
    _refused(
        capsys,
        ["allocate", "--candidates", "q4_K", "--avg-bits", "5", *_lm(offline_assets["lm"], offline_assets["text"])],
        "candidate q4_K fits no linear unit of this model: q4_K needs rows that are multiples of 256 weights",
    )


def test_too_little_data_for_an_interval_is_refused(offline_assets, capsys):
    for command in (
        ["sensitivity", "--formats", "q4_0"],
        ["allocate", "--avg-bits", "6", "--candidates", "q4_0", "q8_0"],
        ["mixed"],
    ):
        _refused(
            capsys,
            [*command, *_lm(offline_assets["lm"], offline_assets["text"], tokens=256)],
            "--max-tokens 256 scores 254 tokens, 2 bootstrap block(s) of 128 tokens, and an interval needs at least 8: "
            "use --max-tokens 1024 or more",
        )
    assert main(["baseline", *_lm(offline_assets["lm"], offline_assets["text"], tokens=256)]) == 0  # no interval there


def test_data_segments_are_never_smaller_than_an_interval_needs(offline_assets):
    import quantsense as qs
    from quantsense.evaluation.statistics import MIN_BOOTSTRAP_BLOCKS

    for tokens, count in ((1024, 1), (2048, 2), (4096, 4)):
        ws = qs.open_workspace(
            str(offline_assets["lm"]),
            data=str(offline_assets["text"]),
            task="wikitext",
            quiet=True,
            max_tokens=tokens,
            context=128,
            stride=128,
        )
        segments = ws.segments()
        assert segments.count == count
        first = sum(len(b.index) for b in segments.parts[0])
        assert ws.task.interval_blocks(first) >= MIN_BOOTSTRAP_BLOCKS
        row = segments.compare([("q4_0", qs.Plan.of({ws.units.linear_units()[0]: ws.format("q4_0")}))], 1)["q4_0"]
        assert row["kl_ci_high"] > row["kl_ci_low"]  # never a zero-width interval


def test_strategies_at_a_format_no_row_holds_are_refused_before_the_baseline(offline_assets, capsys):
    cls = ["--model", str(offline_assets["cls"]), "--data", str(offline_assets["tsv"]), "--no-store", "--quiet"]
    _refused(
        capsys, ["mixed", "--rank-format", "q4_K", *cls], "the block ranking at q4_K needs every block linear in q4_K"
    )
    _refused(capsys, ["run", "--formats", "q8_0", "q4_K", *cls], "q4_K needs rows that are multiples of 256 weights")


def test_an_imatrix_of_another_model_a_folder_or_a_legacy_file_is_refused_before_any_work(
    offline_assets, k_lm, tmp_path, capsys
):
    other = tmp_path / "k.imatrix.gguf"
    assert main(["imatrix", *_lm(k_lm, offline_assets["text"], tokens=512), "--out", str(other)]) == 0
    capsys.readouterr()
    lm = _lm(offline_assets["lm"], offline_assets["text"])
    _refused(
        capsys,
        ["sensitivity", "--formats", "q4_0", "--imatrix", str(other), *lm],
        f"imatrix file {other} was made for another model: its blk.0.ffn_down.weight has 256 columns where this "
        "model's weight takes 128 inputs",
    )
    _refused(
        capsys,
        ["sensitivity", "--formats", "q4_0", "--imatrix", str(tmp_path), *lm],
        f"--imatrix {tmp_path} is a folder; pass the importance matrix file itself",
    )
    legacy = tmp_path / "imatrix.dat"
    legacy.write_bytes(b"\x07\x00\x00\x00" + bytes(64))
    _refused(
        capsys,
        ["sensitivity", "--formats", "q4_0", "--imatrix", str(legacy), *lm],
        f"legacy .dat imatrix files are not read); convert it with llama.cpp: llama-imatrix --in-file {legacy} -o "
        f"{tmp_path / 'imatrix'}.gguf",
    )


def test_llama_cpp_needs_on_a_classifier_are_refused_naming_them(offline_assets, capsys):
    cls = ["--model", str(offline_assets["cls"]), "--data", str(offline_assets["tsv"]), "--no-store", "--quiet"]
    expect = "needs llama.cpp's tensor names, and this bert model (BertForSequenceClassification) has none"
    line = _refused(capsys, ["allocate", "--max-size-of", "Q4_K_M", "--candidates", "q4_0", "q8_0", *cls], expect)
    assert line.startswith("quantsense: error: a llama.cpp preset")
    _refused(capsys, ["frontier", "--preset", "Q4_K_M", "--candidates", "q4_0", "q8_0", *cls], expect)
    line = _refused(capsys, ["imatrix", *cls, "--out", "never.gguf"], expect)
    assert line.startswith("quantsense: error: an importance matrix")


def test_presets_without_llama_cpp_are_refused_before_any_work(smollm2, monkeypatch, capsys):
    from quantsense.errors import QuantsenseError
    from quantsense.backends.llama_cpp import ggml_lib

    def missing():
        raise QuantsenseError(ggml_lib.INSTALL_HINT)

    monkeypatch.setattr(ggml_lib, "library_path", missing)
    ggml_lib.library.cache_clear()
    try:
        _refused(
            capsys,
            ["allocate", "--max-size-of", "Q4_K_M", "--candidates", "q4_0", "q8_0", *_lm(smollm2, WIKI)],
            "ggml formats need llama.cpp's library: install llama-cpp-python",
        )
    finally:
        ggml_lib.library.cache_clear()


def test_a_broken_llama_cpp_is_refused_before_the_export_is_written(smollm2, tmp_path):
    stub = tmp_path / "stub" / "llama_cpp"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        "raise RuntimeError('Failed to load shared library libllama.so: undefined symbol')\n"
    )
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"blocks": {"0": {"format": "q4_0"}}}))
    out = tmp_path / "out.gguf"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(stub.parent), str(REPO / "src")])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantsense.cli",
            "export",
            str(plan),
            "--format",
            "gguf",
            "--out",
            str(out),
            *_lm(smollm2, WIKI),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    lines = [x for x in proc.stderr.splitlines() if x.startswith("quantsense")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (
        lines
        and "llama-cpp-python is installed but does not load (RuntimeError: Failed to load shared library" in lines[0]
    )
    assert not out.exists()


def test_unclear_messages_name_the_problem_and_the_fix(offline_assets, tmp_path, capsys):
    lm = _lm(offline_assets["lm"], offline_assets["text"])
    _refused(
        capsys,
        ["allocate", "--unit", "linear", "--tie", "qkv_proj", "--avg-bits", "6", "--candidates", "q4_0", "q8_0", *lm],
        "--tie 'qkv_proj' matches no linear unit's name inside a block (mlp.down_proj, mlp.gate_proj",
    )
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"blocks": {"7": {"format": "q4_0"}}}))
    line = _refused(capsys, ["mixed", "--plan", str(plan), *lm], f"plan file {plan}: block index 7 is out of range")
    assert line.count("plan file") == 1
    plan.write_text(json.dumps({"blocks": {"0": {"format": "q4_0"}}}))
    cls = ["--model", str(offline_assets["cls"]), "--data", str(offline_assets["tsv"]), "--no-store", "--quiet"]
    line = _refused(
        capsys,
        ["export", str(plan), "--format", "onnx", "--out", str(tmp_path / "o"), *cls],
        "is planned as q4_0, which the onnx export cannot write; plan it in an ONNX Runtime format",
    )
    assert "--format gguf" not in line
