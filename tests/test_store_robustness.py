"""The results store under bad paths, locks, racing first opens and untrustworthy rows."""

import multiprocessing
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
import pytest

from quantsense.errors import QuantsenseError
from quantsense.store import ResultStore, _encode

FORK = multiprocessing.get_context("fork")
NOBODY = 65534


def _open_and_put(path: str, barrier, index: int, results) -> None:
    barrier.wait()
    try:
        store = ResultStore(path)
        store.put(f"k{index}", f"row {index}", {}, {"logits": np.full(3, index, dtype=np.float32)}, 0.1)
        store.close()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("round_no", range(5))
def test_racing_first_opens_all_succeed(tmp_path, round_no):
    path = str(tmp_path / "fresh" / "s.sqlite")
    workers = 8
    barrier, results = FORK.Barrier(workers), FORK.Queue()
    processes = [FORK.Process(target=_open_and_put, args=(path, barrier, i, results)) for i in range(workers)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join()
    assert outcomes == ["ok"] * workers
    store = ResultStore(path)
    assert len(store) == workers
    for i in range(workers):
        assert store.get(f"k{i}")["logits"].tolist() == [i] * 3


def test_directory_as_store_path(tmp_path):
    with pytest.raises(QuantsenseError, match=r"is a directory; pass a file path with --store") as info:
        ResultStore(tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("below", ["s.sqlite", "sub/s.sqlite"])
def test_parent_that_is_a_file(tmp_path, below):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    with pytest.raises(
        QuantsenseError, match=rf"cannot create the directory for results store .*: {blocker} is a file"
    ):
        ResultStore(blocker / below)
    assert blocker.read_text() == "keep me"


def _open_unprivileged(path: Path, results) -> None:
    try:
        if os.geteuid() == 0:  # root ignores permissions: open as an ordinary user, as a user would
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        ResultStore(path)
        results.put("opened")
    except Exception as exc:
        results.put(str(exc))


def _message_when_opened_unprivileged(path: Path) -> str:
    results = FORK.Queue()
    process = FORK.Process(target=_open_unprivileged, args=(path, results))
    process.start()
    message = results.get(timeout=60)
    process.join()
    return message


@pytest.fixture
def shared_dir():
    """A directory under the system temp dir, reachable by the unprivileged user (pytest's tmp_path is not)."""
    path = Path(tempfile.mkdtemp())
    path.chmod(0o755)
    yield path
    path.chmod(0o755)
    shutil.rmtree(path)


def _written_store(path: Path) -> bytes:
    store = ResultStore(path)
    store.put("k", "k", {}, {"logits": np.ones(2)}, 0.0)
    store.close()
    return path.read_bytes()


def test_read_only_store_file(shared_dir):
    path = shared_dir / "s.sqlite"
    before = _written_store(path)
    shared_dir.chmod(0o777)
    path.chmod(0o444)
    message = _message_when_opened_unprivileged(path)
    assert (
        message
        == f"results store {path} is not writable; fix its permissions (chmod u+w) or pass another path with --store"
    )
    assert path.read_bytes() == before


def test_store_in_read_only_directory(shared_dir):
    path = shared_dir / "s.sqlite"
    before = _written_store(path)
    path.chmod(0o666)
    shared_dir.chmod(0o555)
    message = _message_when_opened_unprivileged(path)
    assert message.startswith(f"results store {path} is in a directory that is not writable ({shared_dir};")
    assert path.read_bytes() == before


def test_locked_store_says_locked_not_corrupt(tmp_path):
    path = tmp_path / "s.sqlite"
    before = _written_store(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(QuantsenseError) as info:
            ResultStore(path, timeout=0.3)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert str(info.value) == (
        f"results store {path} is locked by another process (waited 0.3 s); "
        "wait for that process to finish or pass another path with --store"
    )
    assert ResultStore(path).get("k")["logits"].tolist() == [1.0, 1.0]
    assert path.read_bytes() == before


def test_write_blocked_beyond_timeout_is_a_user_error(tmp_path):
    path = tmp_path / "s.sqlite"
    store = ResultStore(path, timeout=0.3)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(QuantsenseError, match="is locked by another process"):
            store.put("k", "k", {}, {"logits": np.ones(2)}, 0.0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.put("k", "k", {}, {"logits": np.ones(2)}, 0.0)
    assert len(store) == 1


def test_random_bytes_are_corrupt_and_untouched(tmp_path):
    path = tmp_path / "s.sqlite"
    path.write_bytes(np.random.default_rng(0).bytes(8192))
    before = path.read_bytes()
    with pytest.raises(QuantsenseError, match=r"is corrupt or not a quantsense store \(file is not a database\)"):
        ResultStore(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_put_refuses_non_finite(tmp_path, bad):
    store = ResultStore(tmp_path / "s.sqlite")
    with pytest.raises(ValueError, match="array\\(s\\) logits hold NaN or infinity"):
        store.put("k", "k", {}, {"logits": np.array([1.0, bad]), "ids": np.arange(2)}, 0.0)
    assert len(store) == 0


def _raw_row(store: ResultStore, key: str, arrays: dict) -> None:
    """A row written as an older or buggy writer could have, bypassing put's checks."""
    store._conn.execute("INSERT INTO evaluations VALUES (?, 'raw', '{}', ?, 2.5, 0)", (key, _encode(arrays)))


def test_fetch_treats_non_finite_rows_as_unreadable(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    _raw_row(store, "nan", {"logits": np.array([0.5, np.nan])})
    _raw_row(store, "inf", {"loss": np.array([np.inf], dtype=np.float16)})
    _raw_row(store, "fine", {"logits": np.array([0.5, 1.5])})
    assert store.fetch("nan") is None
    assert store.fetch("inf") is None
    arrays, seconds = store.fetch("fine")
    assert arrays["logits"].tolist() == [0.5, 1.5] and seconds == 2.5


def test_fetch_validate_rejects_wrong_shapes(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite")
    _raw_row(store, "k", {"logits": np.zeros((3, 5))})

    def two_classes(arrays):
        return arrays["logits"].shape == (3, 2)

    def raises(arrays):
        return arrays["missing"].shape == (3, 2)

    assert store.fetch("k", validate=two_classes) is None
    assert store.fetch("k", validate=raises) is None
    assert store.get("k", validate=two_classes) is None
    arrays, seconds = store.fetch("k", validate=lambda a: a["logits"].shape == (3, 5))
    assert arrays["logits"].shape == (3, 5) and seconds == 2.5
