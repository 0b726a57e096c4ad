"""Read a local table (.tsv, .csv, .jsonl, .parquet) into a list of row dicts, with clear errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from quantsense.errors import QuantsenseError

SUPPORTED = (".tsv", ".csv", ".jsonl", ".parquet")
FIELD_LIMIT = 32 << 20  # characters in one field: far beyond any sentence, small enough to catch an unclosed quote


def check_data_path(path: str | Path, what: str, expected: str, flag: str = "--data") -> Path:
    """``path`` as a Path when it is a file; otherwise one line saying it is missing or a directory."""
    path = Path(path)
    if path.is_dir():
        raise QuantsenseError(f"{what} {path} is a directory; pass {expected} with {flag}")
    if not path.is_file():
        raise QuantsenseError(f"{what} {path} does not exist; pass {expected} with {flag}")
    return path


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def read_text_file(path: Path, what: str) -> str:
    """The file decoded as UTF-8 (a leading byte-order mark dropped); binary or other encodings refused with the line."""
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise QuantsenseError(
            f"{what} {path}, line {_line_of(data, nul)}: contains NUL bytes, so it is binary or UTF-16, "
            "not UTF-8 text; save it as UTF-8 text"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise QuantsenseError(
            f"{what} {path}, line {_line_of(data, exc.start)}: byte 0x{data[exc.start]:02x} is not UTF-8; "
            "save the file as UTF-8 text"
        ) from None


def _records(reader, path: Path):
    """(first line number, row) per record; a csv error names the line where the record started."""
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            hint = "; check for an unclosed quote" if "field limit" in str(exc) else ""
            raise QuantsenseError(f"data file {path}, line {start}: {exc}{hint}") from None
        yield start, row


def _read_delimited(path: Path, delimiter: str) -> list[dict]:
    csv.field_size_limit(FIELD_LIMIT)
    text = read_text_file(path, "data file")
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        fieldnames = reader.fieldnames
    except csv.Error as exc:
        raise QuantsenseError(f"data file {path}, line 1: {exc}") from None
    if not fieldnames:
        raise QuantsenseError(f"data file {path} is empty; it needs a header row naming the text column and 'label'")
    repeated = sorted({name for name in fieldnames if fieldnames.count(name) > 1})
    if repeated:
        raise QuantsenseError(
            f"data file {path}, line 1: column(s) {', '.join(map(repr, repeated))} appear more than once "
            "in the header; keep one column of each name"
        )
    rows = []
    for line_no, row in _records(reader, path):
        if None in row or any(v is None for v in row.values()):
            raise QuantsenseError(f"data file {path}, line {line_no}: expected {len(fieldnames)} columns")
        rows.append(row)
    return rows


class _RepeatedKey(Exception):
    pass


def _no_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object, refusing a key given twice (json keeps the last one silently)."""
    row = {}
    for key, value in pairs:
        if key in row:
            raise _RepeatedKey(key)
        row[key] = value
    return row


def _read_jsonl(path: Path) -> list[dict]:
    text = read_text_file(path, "data file")
    if not text.strip():
        raise QuantsenseError(
            f"data file {path} is empty; it needs one JSON object per line with the text column and 'label'"
        )
    rows = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_no_repeated_keys)
        except json.JSONDecodeError as exc:
            raise QuantsenseError(f"data file {path}, line {line_no}: not valid JSON ({exc.msg})") from None
        except _RepeatedKey as exc:
            raise QuantsenseError(
                f"data file {path}, line {line_no}: key {exc.args[0]!r} appears more than once; keep one of each"
            ) from None
        if not isinstance(row, dict):
            raise QuantsenseError(f"data file {path}, line {line_no}: expected a JSON object per line")
        rows.append(row)
    return rows


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise QuantsenseError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises many types for a bad file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantsenseError(f"data file {path} is not a readable parquet file: {reason}") from None


def read_table(path: str | Path, flag: str = "--data") -> list[dict]:
    path = check_data_path(path, "data file", "a .tsv/.csv/.jsonl/.parquet file", flag)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise QuantsenseError(f"data file {path} has unsupported type {suffix!r}; use one of {', '.join(SUPPORTED)}")
    if suffix == ".tsv":
        rows = _read_delimited(path, "\t")
    elif suffix == ".csv":
        rows = _read_delimited(path, ",")
    elif suffix == ".jsonl":
        rows = _read_jsonl(path)
    else:
        rows = _read_parquet(path)
    if not rows:
        raise QuantsenseError(f"data file {path} has no rows")
    return rows
