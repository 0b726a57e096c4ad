"""Bad input exits with code 2 and one line on stderr, never a traceback, and writes nothing."""

import subprocess
import sys

import pytest

from quantsense.cli import main


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "quantsense.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def _one_line_error(proc):
    assert proc.returncode == 2, proc.stderr
    lines = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and "Loading weights" not in line and "torchao" not in line and "_pytree" not in line
    ]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_bad_flag():
    assert "unrecognized arguments: --bogus" in _one_line_error(_cli("baseline", "--bogus"))


@pytest.mark.parametrize("bits", ["9", "1", "four", "q7_k"])
def test_bits_outside_range(bits):
    line = _one_line_error(_cli("sensitivity", "--bits", bits))
    assert "bits must be" in line or ("unknown format" in line and "q4_0" in line)


def test_missing_model_directory(tmp_path):
    line = _one_line_error(_cli("baseline", "--model", str(tmp_path / "nope"), "--data", "x.tsv", "--no-store"))
    assert "does not exist" in line and "--model" in line


def test_malformed_data_file(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("review\tlabel\ngood\t1\n")
    line = _one_line_error(_cli("baseline", "--model", str(tiny_model_dir), "--data", str(bad), "--no-store"))
    assert str(bad) in line and "'sentence'" in line


def test_block_index_out_of_range(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "d.tsv"
    data.write_text("sentence\tlabel\ngood film\t1\nbad film\t0\n")
    code = main(
        ["ablation", "--model", str(tiny_model_dir), "--data", str(data), "--no-store", "--quiet", "--block", "7"]
    )
    assert code == 2
    assert "block index 7 is out of range: the model has blocks 0..2" in capsys.readouterr().err


def test_corrupt_store_is_not_overwritten(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "d.tsv"
    data.write_text("sentence\tlabel\ngood film\t1\nbad film\t0\n")
    store = tmp_path / "store.sqlite"
    store.write_bytes(b"garbage" * 500)
    code = main(["baseline", "--model", str(tiny_model_dir), "--data", str(data), "--store", str(store), "--quiet"])
    assert code == 2
    assert "corrupt or not a quantsense store" in capsys.readouterr().err
    assert store.read_bytes() == b"garbage" * 500


def test_hub_id_offline_says_how_to_pass_a_local_directory(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["baseline", "--model", "quantsense-test/definitely-not-a-model", "--data", "x.tsv", "--no-store"])
    assert code == 2
    assert "--model PATH" in capsys.readouterr().err
