import json

import numpy as np
import pytest

from quantsense.data import load_classification_data
from quantsense.errors import QuantsenseError

LABELS = {0: "NEGATIVE", 1: "POSITIVE"}


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "name,text",
    [
        ("d.tsv", "sentence\tlabel\ngood film\t1\nbad film\t0\n"),
        ("d.csv", 'text,label\n"good, really",1\nbad film,0\n'),
        (
            "d.jsonl",
            json.dumps({"sentence": "good film", "label": 1})
            + "\n"
            + json.dumps({"sentence": "bad film", "label": 0})
            + "\n",
        ),
    ],
)
def test_reads_each_format(tmp_path, name, text):
    data = load_classification_data(str(_write(tmp_path / name, text)), LABELS)
    assert len(data) == 2
    assert data.labels.tolist() == [1, 0]


def test_label_names_map_to_ids(tmp_path):
    data = load_classification_data(
        str(_write(tmp_path / "d.tsv", "sentence\tlabel\na\tpositive\nb\tNEGATIVE\n")), LABELS
    )
    assert data.labels.tolist() == [1, 0]


def test_limit_and_fingerprint(tmp_path):
    path = _write(tmp_path / "d.tsv", "sentence\tlabel\na\t1\nb\t0\nc\t1\n")
    a = load_classification_data(str(path), LABELS, limit=2)
    assert a.texts == ["a", "b"]
    assert a.fingerprint() == load_classification_data(str(path), LABELS, limit=2).fingerprint()
    assert a.fingerprint() != load_classification_data(str(path), LABELS).fingerprint()


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("d.tsv", "", "is empty"),
        ("d.tsv", "sentence\tlabel\n", "has no rows"),
        ("d.tsv", "review\tlabel\ngood\t1\n", "needs columns 'sentence' \\(or 'text'\\) and 'label'"),
        ("d.tsv", "sentence\tlabel\ngood\t7\n", "row 1: label '7' is not one of the model's labels"),
        ("d.tsv", "sentence\tlabel\ngood\tmaybe\n", "label 'maybe'"),
        ("d.tsv", "sentence\tlabel\n\t1\n", "empty or missing 'sentence'"),
        ("d.tsv", "sentence\tlabel\ngood\t1\textra\n", "line 2: expected 2 columns"),
        ("d.jsonl", '{"sentence": "a", "label": 1}\n{broken\n', "line 2: not valid JSON"),
        ("d.xlsx", "x", "unsupported type"),
    ],
)
def test_malformed_files_name_the_file_and_problem(tmp_path, name, text, match):
    path = _write(tmp_path / name, text)
    with pytest.raises(QuantsenseError, match=match) as info:
        load_classification_data(str(path), LABELS)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(QuantsenseError, match="does not exist"):
        load_classification_data(str(tmp_path / "nope.tsv"), LABELS)


def test_real_sst2_validation(sst2_validation):
    data = load_classification_data(str(sst2_validation), LABELS)
    assert len(data) == 872
    assert np.bincount(data.labels).tolist() == [428, 444]
