"""Sentence classification data (task ``sst2``): GLUE SST-2 via ``datasets`` or a local file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from quantsense.data.files import read_table
from quantsense.errors import QuantsenseError

TEXT_COLUMNS = ("sentence", "text")


@dataclass
class ClassificationData:
    texts: list[str]
    labels: np.ndarray  # int64, model label ids
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for text, label in zip(self.texts, self.labels.tolist()):
            digest.update(text.encode())
            digest.update(b"\x00%d\x01" % label)
        return digest.hexdigest()[:16]

    def take(self, limit: int | None) -> "ClassificationData":
        if limit is None:
            return self
        return ClassificationData(self.texts[:limit], self.labels[:limit], self.source)


def _label_ids(raw_labels: list, id2label: dict[int, str], where: str) -> np.ndarray:
    by_name = {name.lower(): i for i, name in id2label.items()}
    ids = []
    for row_no, raw in enumerate(raw_labels, start=1):
        text = str(raw).strip()
        if text.lstrip("-").isdigit():
            value = int(text)
        elif text.lower() in by_name:
            value = by_name[text.lower()]
        else:
            value = None
        if value is None or (id2label and value not in id2label):
            allowed = ", ".join(f"{i}={n}" for i, n in sorted(id2label.items()))
            raise QuantsenseError(f"{where}, row {row_no}: label {raw!r} is not one of the model's labels ({allowed})")
        ids.append(value)
    return np.asarray(ids, dtype=np.int64)


def _row_text(row: dict, column: str, where: str, row_no: int) -> str:
    text = row.get(column)
    if text is not None and not isinstance(text, str):
        raise QuantsenseError(f"{where}, row {row_no}: {column!r} must be text, got {type(text).__name__} {text!r:.40}")
    if not text or not text.strip():
        raise QuantsenseError(f"{where}, row {row_no}: empty or missing {column!r}")
    return text.strip()


def _row_label(row: dict, where: str, row_no: int):
    if row.get("label") is None:  # a JSON row without the key, or with null
        raise QuantsenseError(f"{where}, row {row_no}: missing 'label'; every row needs a text column and 'label'")
    return row["label"]


def _rows_from_hub() -> tuple[list[dict], str]:
    try:
        import datasets
    except ImportError:
        raise QuantsenseError(
            "no --data file given and the 'datasets' package is missing; pass a local SST-2 file with --data "
            "(e.g. validation.tsv) or pip install datasets"
        ) from None
    try:
        split = datasets.load_dataset("glue", "sst2", split="validation")
    except Exception:
        raise QuantsenseError(
            "could not download GLUE SST-2 from the hub (offline?); pass a local file with --data PATH"
        ) from None
    return [dict(row) for row in split], "glue/sst2:validation"


def load_classification_data(
    path: str | None, id2label: dict[int, str], limit: int | None = None, flag: str = "--data"
) -> ClassificationData:
    """Rows with a text column (``sentence`` or ``text``) and ``label``; labels checked against the model.
    ``flag`` is the option that named the file (``--data``, ``--calibration-data``), for the messages."""
    if path:
        rows, source = read_table(path, flag), str(path)
    else:
        rows, source = _rows_from_hub()
    where = f"data file {source}"
    columns = set(rows[0])
    text_column = next((c for c in TEXT_COLUMNS if c in columns), None)
    if text_column is None or "label" not in columns:
        raise QuantsenseError(
            f"{where} needs columns 'sentence' (or 'text') and 'label'; found {', '.join(sorted(map(str, columns)))}"
        )
    if limit is not None:
        if limit < 1:
            raise QuantsenseError(f"--limit must be a positive number of examples, got {limit}")
        rows = rows[:limit]
    texts = [_row_text(row, text_column, where, row_no) for row_no, row in enumerate(rows, start=1)]
    labels = _label_ids([_row_label(row, where, row_no) for row_no, row in enumerate(rows, start=1)], id2label, where)
    return ClassificationData(texts=texts, labels=labels, source=source)
