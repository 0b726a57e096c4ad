"""SQLite results store: one row per finished evaluation, committed when it finishes, keyed by content.

The key hashes the model weights fingerprint, the data (token batches) fingerprint, the plan and
the metric version, so a re-run reuses every finished evaluation and a changed input never
matches a stale one. WAL mode and a busy timeout let several processes write to one store; several
processes may also open (and create) one fresh store at the same moment.
A file that is not a quantsense store is refused, never overwritten; a row that cannot be trusted
(undecodable, NaN/infinite values, or rejected by the caller's check) reads as absent and is recomputed.
"""

from __future__ import annotations

import io
import json
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from quantsense.errors import QuantsenseError

FORMAT = "quantsense-results"
SCHEMA_VERSION = 1
DEFAULT_TIMEOUT_S = 60.0

T = TypeVar("T")


def _encode(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _decode(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _non_finite(arrays: dict[str, np.ndarray]) -> list[str]:
    """Names of the float/complex arrays holding a NaN or an infinity."""
    return [
        name for name, array in arrays.items() if np.asarray(array).dtype.kind in "fc" and not np.isfinite(array).all()
    ]


_MESSAGE_KINDS = (  # fallback for Pythons before 3.11, whose sqlite3 errors carry no error name
    ("locked", "SQLITE_BUSY"),
    ("busy", "SQLITE_BUSY"),
    ("readonly", "SQLITE_READONLY"),
    ("read-only", "SQLITE_READONLY"),
    ("disk is full", "SQLITE_FULL"),
    ("unable to open", "SQLITE_CANTOPEN"),
    ("not a database", "SQLITE_NOTADB"),
    ("malformed", "SQLITE_CORRUPT"),
)


def _error_kind(exc: sqlite3.Error) -> str:
    """The SQLite primary error name (SQLITE_BUSY, SQLITE_NOTADB, ...) of ``exc``."""
    name = getattr(exc, "sqlite_errorname", None)
    if name:
        return "_".join(name.split("_")[:2])  # SQLITE_BUSY_RECOVERY -> SQLITE_BUSY
    text = str(exc).lower()
    return next((kind for phrase, kind in _MESSAGE_KINDS if phrase in text), "SQLITE_ERROR")


def _is_busy(exc: sqlite3.Error) -> bool:
    return _error_kind(exc) in ("SQLITE_BUSY", "SQLITE_LOCKED")


class ResultStore:
    def __init__(self, path: str | Path, timeout: float = DEFAULT_TIMEOUT_S):
        """Open (creating if absent) the store at ``path``; ``timeout`` seconds is how long to wait for another process's lock."""
        self.path = Path(path)
        self.timeout = float(timeout)
        self._check_path()
        self._conn = None
        try:
            self._conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self._retrying(self._open_schema)
            self._retrying(lambda: self._conn.execute("PRAGMA journal_mode = WAL").fetchone())
        except sqlite3.Error as exc:
            self._close_quietly()
            raise self._user_error(exc) from None
        except QuantsenseError:
            self._close_quietly()
            raise

    def _check_path(self) -> None:
        """Refuse, before SQLite sees it, a path that cannot hold a writable store, naming why."""
        where = f"results store {self.path}"
        if self.path.is_dir():
            raise QuantsenseError(
                f"{where} is a directory; pass a file path with --store (e.g. {self.path / 'results.sqlite'})"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            blocker = next(p for p in [self.path.parent, *self.path.parent.parents] if p.exists() and not p.is_dir())
            raise QuantsenseError(
                f"cannot create the directory for {where}: {blocker} is a file; pass a --store path inside a directory"
            ) from None
        except OSError as exc:
            raise QuantsenseError(
                f"cannot create the directory {self.path.parent} for {where} ({exc.strerror}); "
                "pass a --store path in a writable directory"
            ) from None
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise QuantsenseError(
                f"{where} is not writable; fix its permissions (chmod u+w) or pass another path with --store"
            )
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            raise QuantsenseError(
                f"{where} is in a directory that is not writable ({self.path.parent}; SQLite creates its -wal and -shm "
                "files there); fix the directory's permissions or pass another path with --store"
            )

    def _retrying(self, action: Callable[[], T]) -> T:
        """Run ``action``, retrying within the timeout when SQLite answers busy without waiting (journal-mode switch)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(random.uniform(0.01, 0.05))

    def _open_schema(self) -> None:
        """Create the tables in an empty database, or check an existing one, in one write transaction."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")  # one process at a time: concurrent creators see a finished schema
            objects = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master")}
            if objects:
                self._check()
            else:
                self._create()
            self._conn.execute("COMMIT")

    def _create(self) -> None:
        self._conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._conn.execute(
            "CREATE TABLE evaluations (key TEXT PRIMARY KEY, label TEXT, meta TEXT NOT NULL, "
            "payload BLOB NOT NULL, seconds REAL, created REAL NOT NULL)"
        )
        self._conn.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
        self._conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

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

    def _user_error(self, exc: sqlite3.Error) -> QuantsenseError:
        """One line naming what SQLite's error means for this store, and what to do."""
        where = f"results store {self.path}"
        kind = _error_kind(exc)
        if kind in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            return QuantsenseError(
                f"{where} is locked by another process (waited {self.timeout:g} s); "
                "wait for that process to finish or pass another path with --store"
            )
        if kind in ("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_CANTOPEN"):
            return QuantsenseError(
                f"{where} is not writable ({exc}); fix its permissions or pass another path with --store"
            )
        if kind == "SQLITE_FULL":
            return QuantsenseError(
                f"the disk holding {where} is full; free some space or pass another path with --store"
            )
        if kind in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            return QuantsenseError(
                f"{where} is corrupt or not a quantsense store ({exc}); move it aside or pass another path with --store"
            )
        return QuantsenseError(f"could not use {where} ({exc}); pass another path with --store")

    def _close_quietly(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def fetch(
        self, key: str, validate: Callable[[dict[str, np.ndarray]], bool] | None = None
    ) -> tuple[dict[str, np.ndarray], float] | None:
        """The stored arrays and how long they took to compute when first run; None if absent or unreadable.

        A row is unreadable when its payload does not decode, a float array holds NaN or infinity, or
        ``validate(arrays)`` (the caller's check of names and shapes) returns False or raises: such a row
        is recomputed and replaced, never trusted.
        """
        row = self._conn.execute("SELECT payload, seconds FROM evaluations WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            arrays = _decode(row[0])
            if _non_finite(arrays) or (validate is not None and not validate(arrays)):
                return None
            return arrays, float(row[1] or 0.0)
        except Exception:
            return None

    def get(
        self, key: str, validate: Callable[[dict[str, np.ndarray]], bool] | None = None
    ) -> dict[str, np.ndarray] | None:
        found = self.fetch(key, validate)
        return found[0] if found else None

    def put(self, key: str, label: str, meta: dict, arrays: dict[str, np.ndarray], seconds: float) -> None:
        """Store one finished evaluation. NaN or infinity in a float array is a caller's bug: ValueError, nothing stored."""
        bad = _non_finite(arrays)
        if bad:
            raise ValueError(f"refusing to store {label!r}: array(s) {', '.join(bad)} hold NaN or infinity")
        try:
            self._conn.execute(
                "INSERT OR REPLACE INTO evaluations VALUES (?, ?, ?, ?, ?, ?)",
                (key, label, json.dumps(meta, sort_keys=True), _encode(arrays), seconds, time.time()),
            )
        except sqlite3.OperationalError as exc:
            raise self._user_error(exc) from None

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]

    def close(self) -> None:
        self._conn.close()
