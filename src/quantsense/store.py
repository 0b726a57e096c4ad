"""SQLite results store: one row per finished evaluation, committed when it finishes, keyed by content.

The key hashes the model weights fingerprint, the data (token batches) fingerprint, the plan and
the metric version, so a re-run reuses every finished evaluation and a changed input never
matches a stale one. WAL mode and a busy timeout let several processes write to one store.
A file that is not a quantsense store is refused, never overwritten.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from pathlib import Path

import numpy as np

from quantsense.errors import QuantsenseError

FORMAT = "quantsense-results"
SCHEMA_VERSION = 1


def _encode(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _decode(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh_file = not self.path.exists() or self.path.stat().st_size == 0
        try:
            self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._conn.execute("PRAGMA busy_timeout = 60000")
            if fresh_file:
                self._create()
            else:
                self._check()
            self._conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.DatabaseError as exc:
            raise QuantsenseError(
                f"results store {self.path} is corrupt or not a quantsense store ({exc}); "
                "move it aside or pass another path with --store"
            ) from None

    def _create(self) -> None:
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS evaluations (key TEXT PRIMARY KEY, label TEXT, meta TEXT NOT NULL, "
                "payload BLOB NOT NULL, seconds REAL, created REAL NOT NULL)"
            )
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self._conn.execute("COMMIT")

    def _check(self) -> None:
        tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "evaluations"} <= tables:
            raise QuantsenseError(
                f"{self.path} is an SQLite file but not a quantsense results store (tables: {', '.join(sorted(tables)) or 'none'}); "
                "pass another path with --store"
            )
        meta = dict(self._conn.execute("SELECT key, value FROM meta"))
        if meta.get("format") != FORMAT:
            raise QuantsenseError(f"{self.path} is not a quantsense results store; pass another path with --store")
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise QuantsenseError(
                f"results store {self.path} has schema {meta.get('schema_version')}, this quantsense reads {SCHEMA_VERSION}; "
                "use a new --store path"
            )

    def fetch(self, key: str) -> tuple[dict[str, np.ndarray], float] | None:
        """The stored arrays and how long they took to compute when first run; None if absent or unreadable."""
        row = self._conn.execute("SELECT payload, seconds FROM evaluations WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return _decode(row[0]), float(row[1] or 0.0)
        except Exception:
            return None  # an unreadable row is recomputed and replaced, never trusted

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        found = self.fetch(key)
        return found[0] if found else None

    def put(self, key: str, label: str, meta: dict, arrays: dict[str, np.ndarray], seconds: float) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO evaluations VALUES (?, ?, ?, ?, ?, ?)",
            (key, label, json.dumps(meta, sort_keys=True), _encode(arrays), seconds, time.time()),
        )

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]

    def close(self) -> None:
        self._conn.close()
