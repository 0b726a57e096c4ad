"""Read a local table (.tsv, .csv, .jsonl, .parquet) into a list of row dicts, with clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from quantsense.errors import QuantsenseError

SUPPORTED = (".tsv", ".csv", ".jsonl", ".parquet")


def _read_delimited(path: Path, delimiter: str) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        if not reader.fieldnames:
            raise QuantsenseError(f"data file {path} is empty; it needs a header row naming the text column and 'label'")
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if None in row or any(v is None for v in row.values()):
                raise QuantsenseError(f"data file {path}, line {line_no}: expected {len(reader.fieldnames)} columns")
            rows.append(row)
        return rows


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise QuantsenseError(f"data file {path}, line {line_no}: not valid JSON ({exc.msg})") from None
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
        raise QuantsenseError(f"data file {path} is not a readable parquet file: {exc}") from None


def read_table(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise QuantsenseError(f"data file {path} does not exist; pass a .tsv/.csv/.jsonl/.parquet file with --data")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED:
        raise QuantsenseError(f"data file {path} has unsupported type {suffix!r}; use one of {', '.join(SUPPORTED)}")
    try:
        if suffix == ".tsv":
            rows = _read_delimited(path, "\t")
        elif suffix == ".csv":
            rows = _read_delimited(path, ",")
        elif suffix == ".jsonl":
            rows = _read_jsonl(path)
        else:
            rows = _read_parquet(path)
    except UnicodeDecodeError:
        raise QuantsenseError(f"data file {path} is not UTF-8 text") from None
    if not rows:
        raise QuantsenseError(f"data file {path} has no rows")
    return rows
