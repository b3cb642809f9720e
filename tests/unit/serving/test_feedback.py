"""pipelines/serving/feedback.py: the label rule shared by POST /feedback and `make feedback`, and
the durable, private, whole-line writer. Faults are injected at the OS boundary (os.write, os.fsync)."""

import asyncio
import errno
import json
import math
import os
import stat
from datetime import UTC, datetime

import pydantic
import pytest

from pipelines.serving import feedback
from pipelines.serving.feedback import FeedbackLog, FeedbackUnavailable, InvalidLabel, Target

STRINGS = Target.of("classification", ["No", "Yes"], 50)
INTS = Target.of("classification", [0, 1], 50)
NUMBER = Target.of("regression", [], 50)
SECRET = "SECRET-VALUE-7781"  # a value that must never come back in a message


@pytest.mark.parametrize(
    ("target", "request_id", "record", "label", "key"),
    [
        (STRINGS, "3f2a9c", 0, "Yes", None),
        (STRINGS, "a" * 128, 49, "No", None),
        (STRINGS, "1234567890:ab.c_d-e", 7, "No", None),
        (STRINGS, "r", 0, "Maybe", "label"),  # not a class
        (STRINGS, "r", 0, "yes", "label"),  # case matters, as in the model
        (STRINGS, "r", 0, 1, "label"),  # wrong type for string classes
        (STRINGS, "r", 0, None, "label"),
        (STRINGS, "r", 0, ["Yes"], "label"),
        (INTS, "r", 0, 1, None),
        (INTS, "r", 0, "1", "label"),  # a string is not the class 1
        (INTS, "r", 0, True, "label"),  # nor is a boolean (True == 1 in Python)
        (INTS, "r", 0, 1.0, "label"),  # nor a float
        (INTS, "r", 0, 2, "label"),
        (NUMBER, "r", 0, 2.5, None),
        (NUMBER, "r", 0, -3, None),
        (NUMBER, "r", 0, True, "label"),  # a boolean is not a number
        (NUMBER, "r", 0, math.nan, "label"),
        (NUMBER, "r", 0, math.inf, "label"),
        (NUMBER, "r", 0, 10**400, "label"),  # overflows a float: not a finite number
        (NUMBER, "r", 0, "1.5", "label"),
        (NUMBER, "r", 0, None, "label"),
        (STRINGS, "r", -1, "Yes", "record"),
        (STRINGS, "r", 50, "Yes", "record"),  # max_records 50: indexes 0..49
        (STRINGS, "r", 10**30, "Yes", "record"),
        (STRINGS, "r", True, "Yes", "record"),
        (STRINGS, "r", 1.0, "Yes", "record"),
        (STRINGS, "r", "0", "Yes", "record"),
        (STRINGS, "r", None, "Yes", "record"),
        (STRINGS, "", 0, "Yes", "request_id"),
        (STRINGS, "a" * 129, 0, "Yes", "request_id"),
        (STRINGS, "a b", 0, "Yes", "request_id"),
        (STRINGS, "id\n", 0, "Yes", "request_id"),
        (STRINGS, "idü", 0, "Yes", "request_id"),
        (STRINGS, 12345, 0, "Yes", "request_id"),
        (STRINGS, None, 0, "Yes", "request_id"),
    ],
)
def test_label_rules_by_hand(target, request_id, record, label, key):
    found = feedback.label_problem(target, request_id, record, label)
    assert (found and found[0]) == key


def test_the_first_bad_label_is_named_by_index_and_key_without_its_value():
    labels = [
        {"request_id": "a", "record": 0, "label": "Yes"},
        {"request_id": "b", "record": 1, "label": SECRET},
    ]
    with pytest.raises(InvalidLabel) as caught:
        feedback.check_labels(STRINGS, labels)
    assert caught.value.field == "labels.1.label"
    assert SECRET not in str(caught.value) and '"No", "Yes"' in caught.value.problem


def test_a_bad_request_id_is_not_echoed():
    with pytest.raises(InvalidLabel) as caught:
        feedback.check_labels(STRINGS, [{"request_id": SECRET + " x", "record": 0, "label": "No"}])
    assert caught.value.field == "labels.0.request_id" and SECRET not in caught.value.problem


def test_many_classes_are_named_only_up_to_a_bound():
    target = Target.of("classification", [f"c{i}" for i in range(500)], 5)
    _, problem = feedback.label_problem(target, "r", 0, "zz")
    assert '"c9"' in problem and '"c10"' not in problem and "500 in all" in problem


@pytest.mark.parametrize(("task", "classes"), [("ranking", ["a"]), ("classification", [])])
def test_a_target_that_cannot_take_labels_is_refused(task, classes):
    with pytest.raises(ValueError):
        Target.of(task, classes, 10)


def test_encoded_lines_hold_the_label_when_and_how_it_arrived():
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    data = feedback.encode(
        [{"request_id": "a", "record": 2, "label": "Yes"}, {"request_id": "b", "record": 0, "label": 1.5}],
        "bulk",
        when,
    )
    assert data.endswith(b"\n") and data.count(b"\n") == 2
    assert [json.loads(line) for line in data.splitlines()] == [
        {
            "request_id": "a",
            "record": 2,
            "label": "Yes",
            "received_at": "2026-01-02T03:04:05+00:00",
            "source": "bulk",
        },
        {
            "request_id": "b",
            "record": 0,
            "label": 1.5,
            "received_at": "2026-01-02T03:04:05+00:00",
            "source": "bulk",
        },
    ]
    with pytest.raises(ValueError):
        feedback.encode([], "email")


def read_lines(path):
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "the file ends inside a line"
    return [json.loads(line) for line in data.splitlines()]


def test_append_is_private_whole_and_appends_resubmissions(tmp_path):
    old = os.umask(0)  # the widest umask: the modes must not depend on it
    try:
        log = FeedbackLog(tmp_path / "logs", "api-0")
        line = feedback.encode([{"request_id": "a", "record": 0, "label": "No"}], "api")
        log.append(line)
        log.append(line)  # a resubmission appends again; the monitor's join dedups
    finally:
        os.umask(old)
    path = tmp_path / "logs" / "feedback" / "labels.api-0.jsonl"
    assert log.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [e["request_id"] for e in read_lines(path)] == ["a", "a"]


def test_a_renamed_file_is_started_afresh(tmp_path):
    log = FeedbackLog(tmp_path, "api-0")
    log.append(b'{"n": 1}\n')
    log.path.rename(log.path.with_name("labels.api-0.old.jsonl"))
    log.append(b'{"n": 2}\n')
    assert read_lines(log.path) == [{"n": 2}]


def test_a_full_disk_keeps_nothing_and_says_so(tmp_path, monkeypatch):
    log = FeedbackLog(tmp_path, "api-0")
    log.append(b'{"n": 1}\n')
    real_write = os.write

    def short_then_full(fd, data):  # half of the bytes fit, then the disk is full
        if len(data) > 20:
            return real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(FeedbackUnavailable, match="ENOSPC"):
        log.append(b'{"n": 2, "padding": "xxxxxxxxxxxxxxxxxxxx"}\n')
    monkeypatch.undo()
    assert read_lines(log.path) == [{"n": 1}]


def test_a_failed_fsync_cuts_the_lines_back_out(tmp_path, monkeypatch):
    log = FeedbackLog(tmp_path, "api-0")
    log.append(b'{"n": 1}\n')

    def fsync_fails(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync_fails)
    with pytest.raises(FeedbackUnavailable, match="EIO"):
        log.append(b'{"n": 2}\n')
    monkeypatch.undo()
    assert read_lines(log.path) == [{"n": 1}]


def test_every_append_is_synced_before_it_returns(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_size), real_fsync(fd)))
    log = FeedbackLog(tmp_path, "api-0")
    log.append(b'{"n": 1}\n')
    log.append(b'{"n": 2}\n')
    assert synced == [9, 18]  # synced after each write, with the write's bytes in the file


def test_an_unwritable_folder_is_unavailable_not_a_crash(tmp_path):
    (tmp_path / "feedback").write_text("a file where the folder should be")
    with pytest.raises(FeedbackUnavailable):
        FeedbackLog(tmp_path, "api-0").append(b"{}\n")


def test_a_bad_writer_name_is_refused(tmp_path):
    with pytest.raises(ValueError):
        FeedbackLog(tmp_path, "../x")


def test_accept_checks_everything_before_writing_anything(tmp_path):
    log = FeedbackLog(tmp_path, "api-0")
    labels = [{"request_id": "a", "record": 0, "label": "Yes"}, {"request_id": "b", "record": 0, "label": 3}]
    with pytest.raises(InvalidLabel):
        asyncio.run(feedback.accept(STRINGS, log, labels))
    assert not log.path.exists()
    assert asyncio.run(feedback.accept(STRINGS, log, labels[:1])) == 1
    (entry,) = read_lines(log.path)
    assert entry["source"] == "api" and entry["label"] == "Yes"


def test_the_body_shape_bounds_the_count_and_forbids_other_keys():
    model = feedback.request_model(max_records=2)
    item = {"request_id": "a", "record": 0, "label": "Yes"}
    assert len(model.model_validate({"labels": [item, item]}).labels) == 2
    for body in (
        {"labels": [item] * 3},
        {"labels": []},
        {"labels": [{**item, "extra": 1}]},
        {"labels": [{"request_id": "a", "record": 0}]},
        {"labels": [item], "more": []},
    ):
        with pytest.raises(pydantic.ValidationError):
            model.model_validate(body)


def test_the_log_folder_is_the_services(monkeypatch):
    assert str(feedback.log_dir({})) == "monitoring"
    assert str(feedback.log_dir({"PREDICTION_LOG_DIR": "/var/log/x"})) == "/var/log/x"
