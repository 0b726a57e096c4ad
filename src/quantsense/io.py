"""Files quantsense writes: atomically (temp file + rename), readable by others (0644), JSON-safe."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from quantsense.errors import QuantsenseError

FILE_MODE = 0o644


def read_mapped_tensor(path: str | Path, tensor):
    """A GGUF tensor's data (``tensor`` from ``gguf.GGUFReader``) in the shape and dtype of the reader's memory map,
    read with a plain file read: pages touched through the map stay in the process, and in its peak memory, for as
    long as the reader lives, so a pass over a 16 GB file through the map ends holding 16 GB."""
    import numpy as np

    like = tensor.data  # a view of the map: its shape and dtype, no page touched
    with open(path, "rb") as f:
        raw = os.pread(f.fileno(), int(tensor.n_bytes), int(tensor.data_offset))
    if len(raw) != int(tensor.n_bytes):
        raise QuantsenseError(f"{path} ends inside tensor {tensor.name}: the file is truncated; download it again")
    return np.frombuffer(raw, dtype=like.dtype).reshape(like.shape)


def json_safe(value):
    """NaN -> null and infinities -> "inf"/"-inf", recursively (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


@contextmanager
def atomic_output(path: Path):
    """Yield a temporary path beside ``path`` to write to; on success it becomes ``path`` (mode 0644) in one
    rename, on any error it is removed and ``path`` is left as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:  # a read-only folder, a file where a folder should be, a full disk
        raise QuantsenseError(f"cannot write {path} ({err.strerror or err}); choose a writable folder") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        try:
            os.replace(tmp, path)
        except OSError as err:  # e.g. a folder in the way
            raise QuantsenseError(
                f"cannot write {path} ({err.strerror or err}); move what is there or choose another folder"
            ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output(out: str | Path, single_file: bool = False, empty_folder: bool = False) -> Path:
    """Where a command will write (``--out``), checked before any work: a folder we can write in (``empty_folder``: empty
    or new), or with ``single_file`` a file path that does not exist yet."""
    path = Path(out)
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise QuantsenseError(
            f"--out {out}: {parent} is a file, so nothing can be written under it; choose a folder path"
        )
    if single_file:
        if path.is_dir():
            raise QuantsenseError(
                f"--out {out} is a folder; this command writes one file: pass e.g. --out {out}/model.gguf"
            )
        if path.exists():
            raise QuantsenseError(f"--out {out} already exists; choose another file name or remove it")
        return path
    if path.exists() and not path.is_dir():
        raise QuantsenseError(f"--out {out} is an existing file; pass a folder path")
    if empty_folder and path.is_dir() and any(path.iterdir()):
        raise QuantsenseError(f"export folder {out} already exists and is not empty; choose another --out or remove it")
    writable = path if path.exists() else parent
    if not os.access(writable, os.W_OK):
        raise QuantsenseError(f"--out {out}: cannot write in {writable}; choose a writable folder")
    return path


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as handle:
            handle.write(data)
    return Path(path)


def read_json(path: Path, missing: str, fix: str):
    """The JSON value in ``path``. Absent: a QuantsenseError saying ``missing``; not JSON: one naming the file and ``fix``."""
    path = Path(path)
    if path.is_dir():
        raise QuantsenseError(f"{path} is a folder, not a JSON file: {fix}")
    if not path.is_file():
        raise QuantsenseError(missing)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise QuantsenseError(f"{path} is not valid JSON ({err}): {fix}") from None
    except RecursionError:
        raise QuantsenseError(f"{path} is nested too deeply to be read as JSON: {fix}") from None
    except OSError as err:
        raise QuantsenseError(f"{path} cannot be read ({err.strerror or err}): {fix}") from None


def write_json(path: Path, data) -> Path:
    return write_atomic(path, json.dumps(json_safe(data), indent=2) + "\n")


def _csv_value(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """Rows as CSV with the given columns (default: the first row's keys, then any others seen)."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return write_atomic(path, buffer.getvalue())
