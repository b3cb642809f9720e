"""pipelines/serving/prediction_log.py: one JSON line per answered record, appended, one file per worker."""

import json
import os
from datetime import UTC, datetime

import pytest

from pipelines.serving import prediction_log
from pipelines.serving.prediction_log import PredictionLog


def log_file(directory, worker=0):
    # The layout service.py documents: $PREDICTION_LOG_DIR/predictions/predictions.<worker>.jsonl
    return directory / "predictions" / f"predictions.{worker}.jsonl"


def read_lines(path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text[:-1].split("\n")]


def check_timestamps(entries, before, after):
    for entry in entries:
        stamp = datetime.fromisoformat(entry.pop("timestamp"))
        assert stamp.tzinfo is not None and stamp.utcoffset().total_seconds() == 0
        assert before <= stamp <= after


def test_classification_writes_one_line_per_record_with_its_fields_prediction_and_probabilities(tmp_path):
    log = PredictionLog(tmp_path, worker=0)
    rows = [{"tenure": 3, "plan": "basic", "score": None}, {"tenure": 40, "plan": "pro", "score": 0.5}]
    before = datetime.now(UTC)
    log(
        "req-1",
        "v7",
        rows,
        ["yes", "no"],
        [{"no": 0.25, "yes": 0.75}, {"no": 0.875, "yes": 0.125}],
        latency_ms=12.34567,
    )
    after = datetime.now(UTC)
    entries = read_lines(log_file(tmp_path))
    check_timestamps(entries, before, after)
    assert entries == [
        {
            "request_id": "req-1",
            "record": 0,
            "model_version": "v7",
            "latency_ms": 12.346,
            "tenure": 3,
            "plan": "basic",
            "score": None,
            "prediction": "yes",
            "probability_no": 0.25,
            "probability_yes": 0.75,
        },
        {
            "request_id": "req-1",
            "record": 1,
            "model_version": "v7",
            "latency_ms": 12.346,
            "tenure": 40,
            "plan": "pro",
            "score": 0.5,
            "prediction": "no",
            "probability_no": 0.875,
            "probability_yes": 0.125,
        },
    ]


def test_regression_lines_have_no_probability_keys(tmp_path):
    log = PredictionLog(tmp_path)
    log("req-2", "v1", [{"a": 1.5}, {"a": -2.0}, {"a": 0.0}], [10.25, -3.5, 0.0], None, latency_ms=0.0004)
    entries = read_lines(log_file(tmp_path))
    for entry in entries:
        entry.pop("timestamp")
    assert entries == [
        {
            "request_id": "req-2",
            "record": i,
            "model_version": "v1",
            "latency_ms": 0.0,
            "a": a,
            "prediction": p,
        }
        for i, (a, p) in enumerate([(1.5, 10.25), (-2.0, -3.5), (0.0, 0.0)])
    ]
    assert not any(key.startswith("probability") for entry in entries for key in entry)


def test_calls_append_in_order(tmp_path):
    log = PredictionLog(tmp_path)
    log("first", "v1", [{"a": 1}, {"a": 2}], [0, 1], None, 1.0)
    log("second", "v1", [{"a": 3}], [1], None, 1.0)
    entries = read_lines(log_file(tmp_path))
    assert [(e["request_id"], e["record"], e["a"]) for e in entries] == [
        ("first", 0, 1),
        ("first", 1, 2),
        ("second", 0, 3),
    ]


def test_a_restarted_worker_appends_after_the_existing_lines(tmp_path):
    path = log_file(tmp_path, 3)
    path.parent.mkdir(parents=True)
    path.write_text('{"request_id": "yesterday"}\n')
    PredictionLog(tmp_path, worker=3)("today", "v2", [{"a": 1}], [1], None, 1.0)
    assert [e["request_id"] for e in read_lines(path)] == ["yesterday", "today"]


def test_two_logs_on_the_same_file_interleave_without_overwriting(tmp_path):
    # Without O_APPEND, `first` would write its second line at its own offset, over `second`'s line.
    first, second = PredictionLog(tmp_path, 0), PredictionLog(tmp_path, 0)
    first("a1", "v1", [{"a": 1}, {"a": 2}], [0, 1], None, 1.0)
    second("b1", "v1", [{"a": 3}, {"a": 4}, {"a": 5}], [0, 1, 0], None, 1.0)
    first("a2", "v1", [{"a": 6}], [1], None, 1.0)
    entries = read_lines(log_file(tmp_path))
    assert [(e["request_id"], e["a"]) for e in entries] == [
        ("a1", 1),
        ("a1", 2),
        ("b1", 3),
        ("b1", 4),
        ("b1", 5),
        ("a2", 6),
    ]


def test_separate_workers_write_separate_files(tmp_path):
    PredictionLog(tmp_path, 0)("w0", "v1", [{"a": 1}], [0], None, 1.0)
    PredictionLog(tmp_path, 1)("w1", "v1", [{"a": 2}, {"a": 3}], [1, 1], None, 1.0)
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == [
        "predictions.0.jsonl",
        "predictions.1.jsonl",
    ]
    assert [e["request_id"] for e in read_lines(log_file(tmp_path, 0))] == ["w0"]
    assert [e["request_id"] for e in read_lines(log_file(tmp_path, 1))] == ["w1", "w1"]


def test_one_write_per_request_and_every_line_is_whole_json(tmp_path, monkeypatch):
    log = PredictionLog(tmp_path, "tricky")
    path = log_file(tmp_path, "tricky")
    inode = os.stat(path).st_ino
    real_write, writes = os.write, []

    def counting_write(fd, data):
        if os.fstat(fd).st_ino == inode:
            writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(prediction_log.os, "write", counting_write)
    # Values that would break a naive line format: newlines, quotes, separators, non-ASCII.
    nasty = ["a\nb", 'quote " and \\ backslash', "tab\tcr\r", "é ü 中文", "\u2028\u2029", "", "}{"]
    rows = [{"text": nasty[i % len(nasty)], "n": i} for i in range(200)]
    log("req-x", "v1", rows, [i % 2 for i in range(200)], [{"0": 0.5, "1": 0.5}] * 200, 3.0)
    log("req-y", "v1", rows[:5], [0] * 5, [{"0": 1.0, "1": 0.0}] * 5, 3.0)
    monkeypatch.undo()
    assert len(writes) == 2
    assert writes[0] + writes[1] == path.stat().st_size
    entries = read_lines(path)
    assert len(entries) == 205
    assert [(e["request_id"], e["record"], e["text"], e["n"]) for e in entries] == [
        ("req-x", i, r["text"], r["n"]) for i, r in enumerate(rows)
    ] + [("req-y", i, r["text"], r["n"]) for i, r in enumerate(rows[:5])]


def test_mismatched_rows_and_predictions_write_nothing(tmp_path):
    log = PredictionLog(tmp_path)
    with pytest.raises(ValueError):
        log("req", "v1", [{"a": 1}, {"a": 2}], [0], None, 1.0)
    assert log_file(tmp_path).read_bytes() == b""


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="a data column named like one of the log's own columns (timestamp, request_id, record, "
    "model_version, latency_ms) silently replaces it: `**row` is spread after them",
)
def test_a_column_named_like_a_log_column_does_not_replace_the_logs_own_value(tmp_path):
    log = PredictionLog(tmp_path)
    before = datetime.now(UTC)
    log("req-1", "v3", [{"timestamp": "1999-01-01", "record": 42, "a": 1}], [1], None, 5.0)
    (entry,) = read_lines(log_file(tmp_path))
    assert entry["request_id"] == "req-1"
    assert entry["record"] == 0
    assert datetime.fromisoformat(entry["timestamp"]) >= before
