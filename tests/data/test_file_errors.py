"""Data files that are too long, binary, misplaced or missing columns: read, or refused in one line naming the place."""

import json

import pytest

from quantsense.data import load_classification_data, read_table
from quantsense.data.files import FIELD_LIMIT
from quantsense.data.text import load_text
from quantsense.errors import QuantsenseError

LABELS = {0: "NEGATIVE", 1: "POSITIVE"}
TEN_MB = 10_000_000


def _refused(call, *args) -> str:
    with pytest.raises(QuantsenseError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name,sep", [("long.tsv", "\t"), ("long.csv", ",")])
def test_a_ten_megabyte_line_is_read(tmp_path, name, sep):
    path = tmp_path / name
    path.write_text(f"sentence{sep}label\n" + "a" * TEN_MB + f"{sep}1\nshort{sep}0\n")
    data = load_classification_data(str(path), LABELS)
    assert [len(t) for t in data.texts] == [TEN_MB, 5]
    assert data.labels.tolist() == [1, 0]


def test_a_ten_megabyte_jsonl_line_is_read(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"text": "b" * TEN_MB, "label": "positive"}) + "\n")
    assert len(load_classification_data(str(path), LABELS).texts[0]) == TEN_MB


def test_unclosed_quote_beyond_the_field_limit_names_its_line(tmp_path):
    path = tmp_path / "quote.csv"
    path.write_text('sentence,label\ngood,1\n"never closed,0\n' + "x" * (FIELD_LIMIT + 10) + "\n")
    assert _refused(read_table, path) == (
        f"data file {path}, line 3: field larger than field limit ({FIELD_LIMIT}); check for an unclosed quote"
    )


@pytest.mark.parametrize(
    "content,line",
    [(b"sentence\tlabel\ngood\t1\nba\x00d\t0\n", 3), ("sentence\tlabel\n".encode("utf-16"), 1)],
    ids=["nul", "utf16"],
)
def test_binary_or_utf16_table(tmp_path, content, line):
    path = tmp_path / "d.tsv"
    path.write_bytes(content)
    assert _refused(read_table, path) == (
        f"data file {path}, line {line}: contains NUL bytes, so it is binary or UTF-16, not UTF-8 text; save it as UTF-8 text"
    )


def test_latin1_table_names_the_line_and_byte(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("sentence,label\nfine,1\ncaf\xe9,0\n".encode("latin-1"))
    assert (
        _refused(read_table, path) == f"data file {path}, line 3: byte 0xe9 is not UTF-8; save the file as UTF-8 text"
    )


def test_byte_order_mark_is_not_part_of_the_header(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("sentence,label\nfine,1\n", encoding="utf-8-sig")
    assert read_table(path) == [{"sentence": "fine", "label": "1"}]


@pytest.mark.parametrize("name", ["data", "data.tsv"])
def test_directory_as_data(tmp_path, name):
    (tmp_path / name).mkdir()
    assert _refused(read_table, tmp_path / name) == (
        f"data file {tmp_path / name} is a directory; pass a .tsv/.csv/.jsonl/.parquet file with --data"
    )


@pytest.mark.parametrize("text", ["", "\n  \n\n"], ids=["empty", "blank-lines"])
def test_empty_jsonl(tmp_path, text):
    path = tmp_path / "d.jsonl"
    path.write_text(text)
    assert _refused(read_table, path) == (
        f"data file {path} is empty; it needs one JSON object per line with the text column and 'label'"
    )


def _jsonl(tmp_path, *rows) -> str:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize(
    "rows,problem",
    [
        ([{"review": "good", "stars": 1}], "needs columns 'sentence' (or 'text') and 'label'; found review, stars"),
        (
            [{"sentence": "good", "label": 1}, {"sentence": "bad"}],
            ", row 2: missing 'label'; every row needs a text column and 'label'",
        ),
        (
            [{"sentence": "good", "label": 1}, {"sentence": "bad", "label": None}],
            ", row 2: missing 'label'; every row needs a text column and 'label'",
        ),
        ([{"sentence": "good", "label": 1}, {"text": "bad", "label": 0}], ", row 2: empty or missing 'sentence'"),
        ([{"sentence": 42, "label": 1}], ", row 1: 'sentence' must be text, got int 42"),
    ],
    ids=["no-columns", "row-without-label", "null-label", "other-text-column", "number-as-text"],
)
def test_jsonl_rows_lacking_columns(tmp_path, rows, problem):
    path = _jsonl(tmp_path, *rows)
    message = _refused(load_classification_data, path, LABELS)
    assert message.startswith(f"data file {path}")
    assert message.endswith(problem)


def test_text_file_errors(tmp_path):
    (tmp_path / "dir").mkdir()
    assert (
        _refused(load_text, str(tmp_path / "dir"))
        == f"text file {tmp_path / 'dir'} is a directory; pass a plain-text file with --data"
    )
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    assert _refused(load_text, str(binary)) == (
        f"text file {binary}, line 1: contains NUL bytes, so it is binary or UTF-16, not UTF-8 text; save it as UTF-8 text"
    )
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"one\ntwo\ncaf\xe9\n")
    assert (
        _refused(load_text, str(latin))
        == f"text file {latin}, line 3: byte 0xe9 is not UTF-8; save the file as UTF-8 text"
    )


def test_text_file_newlines_and_bom(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffone\r\ntwo\rthree\n".encode())
    assert load_text(str(path)).text == "one\ntwo\nthree\n"
