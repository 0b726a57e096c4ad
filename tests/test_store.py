import sqlite3

import numpy as np
import pytest

from quantsense.errors import QuantsenseError
from quantsense.store import ResultStore


def test_put_get_and_persist(tmp_path):
    path = tmp_path / "s.sqlite"
    store = ResultStore(path)
    logits = np.arange(6, dtype=np.float32).reshape(3, 2)
    store.put("k1", "label", {"a": 1}, {"logits": logits}, 0.5)
    store.close()
    again = ResultStore(path)
    assert np.array_equal(again.get("k1")["logits"], logits)
    assert again.get("missing") is None
    assert len(again) == 1


def test_corrupt_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database at all" * 100)
    before = path.read_bytes()
    with pytest.raises(QuantsenseError, match="corrupt or not a quantsense store"):
        ResultStore(path)
    assert path.read_bytes() == before


def test_foreign_sqlite_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(QuantsenseError, match="not a quantsense results store"):
        ResultStore(path)
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["users"]


def test_two_writers_share_one_store(tmp_path):
    path = tmp_path / "s.sqlite"
    a, b = ResultStore(path), ResultStore(path)
    a.put("x", "x", {}, {"logits": np.zeros(2)}, 0.0)
    b.put("y", "y", {}, {"logits": np.ones(2)}, 0.0)
    assert len(a) == len(b) == 2
