"""pipelines/batch/feedback.py: labels in bulk, judged by the API's rule, all or nothing."""

import errno
import json
import os

import pandas as pd
import pytest

from pipelines.batch import feedback as bulk
from pipelines.core.errors import DataError, PipelineError
from pipelines.serving.feedback import Target

STRINGS = Target.of("classification", ["No", "Yes"], 50)
INTS = Target.of("classification", [0, 1], 50)
NUMBER = Target.of("regression", [], 50)


def labels_file(folder):
    return folder / "feedback" / "labels.bulk.jsonl"


def read(folder):
    return [json.loads(line) for line in labels_file(folder).read_text().splitlines()]


def write_text(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("name", "sep"), [("labels.csv", ","), ("labels.tsv", "\t")])
def test_a_text_file_is_appended_with_source_bulk(tmp_path, name, sep):
    source = write_text(
        tmp_path / name,
        sep.join(["request_id", "record", "label"]) + "\n" + f"a1{sep}0{sep}Yes\nb2{sep}3{sep}No\n",
    )
    count, path = bulk.ingest(source, tmp_path / "logs", STRINGS, chunk_rows=1)
    assert count == 2 and path == labels_file(tmp_path / "logs")
    entries = read(tmp_path / "logs")
    assert [(e["request_id"], e["record"], e["label"], e["source"]) for e in entries] == [
        ("a1", 0, "Yes", "bulk"),
        ("b2", 3, "No", "bulk"),
    ]
    assert all(e["received_at"].endswith("+00:00") for e in entries)


def test_string_classes_keep_the_cells_text(tmp_path):
    target = Target.of("classification", ["0", "1"], 50)
    source = write_text(tmp_path / "l.csv", "request_id,record,label\na,0,1\n")
    bulk.ingest(source, tmp_path, target, chunk_rows=10)
    assert read(tmp_path)[0]["label"] == "1"


def test_numeric_classes_read_the_cell_as_a_json_literal(tmp_path):
    source = write_text(tmp_path / "l.csv", "request_id,record,label\na,0,1\nb,1,0\n")
    bulk.ingest(source, tmp_path, INTS, chunk_rows=10)
    assert [e["label"] for e in read(tmp_path)] == [1, 0]


@pytest.mark.parametrize(
    ("target", "rows", "where"),
    [
        (STRINGS, "a,0,Yes\nb,1,Maybe\n", "row 2, column label"),
        (INTS, "a,0,1\nb,1,1.0\n", "row 2, column label"),  # 1.0 is not the class 1, as in JSON
        (INTS, "a,0,true\n", "row 1, column label"),
        (NUMBER, "a,0,1.5\nb,0,abc\n", "row 2, column label"),
        (NUMBER, "a,0,\n", "row 1, column label"),  # an empty cell is missing
        (STRINGS, "a,0,Yes\nb,5.0,No\n", "row 2, column record"),
        (STRINGS, "a,-1,Yes\n", "row 1, column record"),
        (STRINGS, "a,99999999999999999999999,Yes\n", "row 1, column record"),
        (STRINGS, "a b,0,Yes\n", "row 1, column request_id"),
        (STRINGS, ",0,Yes\n", "row 1, column request_id"),
    ],
)
def test_a_bad_row_is_named_and_nothing_is_appended(tmp_path, target, rows, where):
    source = write_text(tmp_path / "l.csv", "request_id,record,label\n" + rows)
    with pytest.raises(DataError) as caught:
        bulk.ingest(source, tmp_path / "logs", target, chunk_rows=1)
    assert str(caught.value).startswith(where)
    assert "Maybe" not in str(caught.value) and "abc" not in str(caught.value)
    assert not labels_file(tmp_path / "logs").exists()


def test_a_bad_row_in_a_later_chunk_still_appends_nothing(tmp_path):
    rows = "".join(f"r{i},0,Yes\n" for i in range(25)) + "bad id,0,Yes\n"
    source = write_text(tmp_path / "l.csv", "request_id,record,label\n" + rows)
    with pytest.raises(DataError, match="row 26, column request_id"):
        bulk.ingest(source, tmp_path, STRINGS, chunk_rows=10)
    assert not labels_file(tmp_path).exists()


def test_parquet_keeps_its_types(tmp_path):
    source = str(tmp_path / "l.parquet")
    pd.DataFrame({"label": [1.5, -2.0], "request_id": ["a", "b"], "record": [0, 4]}).to_parquet(source)
    assert bulk.ingest(source, tmp_path, NUMBER, chunk_rows=10)[0] == 2
    assert [(e["record"], e["label"]) for e in read(tmp_path)] == [(0, 1.5), (4, -2.0)]


def test_a_nan_in_parquet_is_refused(tmp_path):
    source = str(tmp_path / "l.parquet")
    pd.DataFrame({"request_id": ["a"], "record": [0], "label": [float("nan")]}).to_parquet(source)
    with pytest.raises(DataError, match="row 1, column label"):
        bulk.ingest(source, tmp_path, NUMBER, chunk_rows=10)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("request_id,record\n", "lacks columns: label"),
        ("request_id,record,label,secret_name\n", "column 4 of 4"),
    ],
)
def test_the_columns_must_be_exactly_the_three(tmp_path, header, message):
    source = write_text(tmp_path / "l.csv", header)
    with pytest.raises(DataError, match=message) as caught:
        bulk.check_source(source)
    assert "secret_name" not in str(caught.value)


def test_an_empty_file_a_missing_file_and_an_unknown_format_are_one_line(tmp_path):
    with pytest.raises(DataError, match="no labels"):
        bulk.ingest(write_text(tmp_path / "l.csv", "request_id,record,label\n"), tmp_path, STRINGS, 10)
    with pytest.raises(DataError, match="does not exist"):
        bulk.check_source(str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="unknown format"):
        bulk.check_source(str(tmp_path / "l.xlsx"))


def test_resubmitting_the_file_appends_again(tmp_path):
    source = write_text(tmp_path / "l.csv", "request_id,record,label\na,0,Yes\n")
    bulk.ingest(source, tmp_path, STRINGS, 10)
    bulk.ingest(source, tmp_path, STRINGS, 10)
    assert [e["request_id"] for e in read(tmp_path)] == ["a", "a"]  # the monitor's join dedups


def test_a_full_disk_is_a_pipeline_error(tmp_path, monkeypatch):
    source = write_text(tmp_path / "l.csv", "request_id,record,label\na,0,Yes\n")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(PipelineError, match="ENOSPC"):
        bulk.ingest(source, tmp_path, STRINGS, 10)
