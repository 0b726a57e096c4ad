"""Plain-text language-modelling data (task ``wikitext``): WikiText-2 test via ``datasets``, or a local file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from quantsense.data.files import check_data_path, read_text_file
from quantsense.errors import QuantsenseError


@dataclass
class TextData:
    text: str
    source: str

    def fingerprint(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def _text_from_hub() -> tuple[str, str]:
    try:
        import datasets
    except ImportError:
        raise QuantsenseError(
            "no --data file given and the 'datasets' package is missing; pass a text file with --data "
            "(e.g. wiki.test.raw) or pip install datasets"
        ) from None
    try:
        split = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    except Exception:
        raise QuantsenseError(
            "could not download WikiText-2 from the hub (offline?); pass a local text file with --data PATH"
        ) from None
    return "\n\n".join(split["text"]), "wikitext-2-raw-v1:test"


def load_text(path: str | None) -> TextData:
    """The whole file as one UTF-8 text (universal newlines: CRLF reads as LF; a byte-order mark is dropped)."""
    if not path:
        text, source = _text_from_hub()
        return TextData(text, source)
    file = check_data_path(path, "text file", "a plain-text file")
    text = read_text_file(file, "text file").replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise QuantsenseError(f"text file {path} is empty")
    return TextData(text, str(path))
