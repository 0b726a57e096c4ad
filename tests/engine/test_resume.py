"""Killing a sweep and re-running the same command gives exactly the uninterrupted results."""

import json
import signal
import subprocess
import sys
import time

from tests.conftest import REPO, store_rows


def _args(model, data, store, out, limit=160):
    return [
        "sensitivity",
        "--model",
        str(model),
        "--data",
        str(data),
        "--limit",
        str(limit),
        "--bits",
        "8",
        "6",
        "4",
        "3",
        "2",
        "--store",
        str(store),
        "--out",
        str(out),
        "--quiet",
        "--exhaustive",
    ]


def _cli(args, **kwargs):
    return [sys.executable, "-m", "quantsense.cli", *args]


def _as_from_a_terminal():
    """A shell starts a foreground command with SIGINT at its default. A parent that ignores SIGINT (a library loaded
    by an earlier test in this process can leave it so) passes SIG_IGN on through exec, and then no Ctrl-C could ever
    reach the command: start it as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_and_stop_after(args, store, rows, sig):
    proc = subprocess.Popen(
        _cli(args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_as_from_a_terminal
    )
    deadline = time.time() + 300
    while store_rows(store) < rows:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep finished before the signal could be sent: give it more work"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _sensitivity_rows(out):
    return json.loads((out / "results.json").read_text())["sensitivity"]["rows"]


def test_sigkill_then_rerun_equals_uninterrupted_and_recomputes_only_the_rest(standin_dir, sst2_validation, tmp_path):
    total = 1 + 6 * 5  # fp32 reference + 6 blocks x 5 bit-widths
    store = tmp_path / "killed.sqlite"
    code, _, _ = _start_and_stop_after(
        _args(standin_dir, sst2_validation, store, tmp_path / "a"), store, 9, signal.SIGKILL
    )
    assert code == -signal.SIGKILL
    saved = store_rows(store)
    assert 9 <= saved < total
    resumed = subprocess.run(
        _cli(_args(standin_dir, sst2_validation, store, tmp_path / "a")),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{total - saved} evaluation(s) computed" in resumed.stdout
    assert f"{saved} came from the store" in resumed.stdout
    fresh = subprocess.run(
        _cli(_args(standin_dir, sst2_validation, tmp_path / "clean.sqlite", tmp_path / "b")),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert fresh.returncode == 0, fresh.stderr
    assert _sensitivity_rows(tmp_path / "a") == _sensitivity_rows(tmp_path / "b")


def test_ctrl_c_says_where_results_are_and_how_to_resume(standin_dir, sst2_validation, tmp_path):
    store = tmp_path / "int.sqlite"
    # all 872 sentences: seconds of work remain after the 4th row, so the signal lands mid-sweep even on a loaded machine
    args = _args(standin_dir, sst2_validation, store, tmp_path / "c", limit=872)
    code, _, err = _start_and_stop_after(args, store, 4, signal.SIGINT)
    assert code == 130
    assert str(store) in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    assert store_rows(store) >= 4
