"""pipelines/serving/prediction_log.py (with log_files.py and log_lines.py): whole JSON lines per answered record, one file per worker,
rotated, retained, private; refused requests as counts.

Faults are injected at the OS boundary (os.write, os.ftruncate, os.fdatasync) and, as root, on a
real 64 KB tmpfs. Every reader here parses every line strictly: one torn line fails the test.
"""

import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipelines.serving import log_files, log_lines, prediction_log
from pipelines.serving.log_files import prune
from pipelines.serving.prediction_log import LogUnavailable, PredictionLog

ROOT = Path(__file__).resolve().parents[3]
WAIT = 5.0  # seconds for the background thread; a hang fails instead of stalling the suite


def log_file(directory, worker=0):
    # The layout service.py documents: $PREDICTION_LOG_DIR/predictions/predictions.<worker>.jsonl
    return directory / "predictions" / f"predictions.{worker}.jsonl"


def parse(data: bytes) -> list[dict]:
    """Every line of a log file, strictly: the file is empty or ends in a newline, and each line is
    one JSON object."""
    if not data:
        return []
    assert data.endswith(b"\n"), "the file ends inside a line"
    return [json.loads(line) for line in data[:-1].split(b"\n")]


def read_lines(path) -> list[dict]:
    return parse(Path(path).read_bytes())


def read_any(path: Path) -> list[dict]:
    return parse(gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes())


def check_timestamps(entries, before, after):
    for entry in entries:
        stamp = datetime.fromisoformat(entry.pop("timestamp"))
        assert stamp.tzinfo is not None and stamp.utcoffset().total_seconds() == 0
        assert before <= stamp <= after


def one(log, request_id, n=1, start=0):
    """A regression request of n records {"a": start..start+n-1}, predicting 2a."""
    log(
        request_id, "v1", [{"a": start + i} for i in range(n)], [2 * (start + i) for i in range(n)], None, 1.0
    )


def until(condition, what):
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def log_fds(monkeypatch):
    """Installs a fault on os.write for the log's own files only; the rest of the process is untouched."""

    real_write = os.write

    def install(log, fault):
        def write(fd, data):
            if fd == log._fd:
                return fault(real_write, fd, data)
            return real_write(fd, data)

        monkeypatch.setattr(prediction_log.os, "write", write)

    return install


# --- The line format ------------------------------------------------------------------------------


def test_classification_writes_one_line_per_record_with_its_inputs_prediction_and_probabilities(tmp_path):
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
            "role": "champion",
            "latency_ms": 12.34567,
            "inputs": {"tenure": 3, "plan": "basic", "score": None},
            "prediction": "yes",
            "probabilities": {"no": 0.25, "yes": 0.75},
        },
        {
            "request_id": "req-1",
            "record": 1,
            "model_version": "v7",
            "role": "champion",
            "latency_ms": 12.34567,
            "inputs": {"tenure": 40, "plan": "pro", "score": 0.5},
            "prediction": "no",
            "probabilities": {"no": 0.875, "yes": 0.125},
        },
    ]


def test_regression_lines_have_no_probabilities(tmp_path):
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
            "role": "champion",
            "latency_ms": 0.0004,  # as observed, unrounded
            "inputs": {"a": a},
            "prediction": p,
        }
        for i, (a, p) in enumerate([(1.5, 10.25), (-2.0, -3.5), (0.0, 0.0)])
    ]


def test_a_column_named_like_a_log_column_does_not_replace_the_logs_own_value(tmp_path):
    log = PredictionLog(tmp_path)
    before = datetime.now(UTC)
    log("req-1", "v3", [{"timestamp": "1999-01-01", "record": 42, "a": 1}], [1], None, 5.0)
    (entry,) = read_lines(log_file(tmp_path))
    assert entry["request_id"] == "req-1"
    assert entry["record"] == 0
    assert datetime.fromisoformat(entry["timestamp"]) >= before


def test_every_reserved_name_as_a_feature_stays_in_inputs(tmp_path):
    reserved = [
        "request_id",
        "record",
        "timestamp",
        "model_version",
        "latency_ms",
        "inputs",
        "prediction",
        "probabilities",
    ]
    row = {name: f"feature {name}" for name in reserved}
    PredictionLog(tmp_path)("req-9", "v3", [row], ["yes"], [{"no": 0.5, "yes": 0.5}], 5.0)
    (entry,) = read_lines(log_file(tmp_path))
    assert entry["inputs"] == row
    assert (entry["request_id"], entry["record"], entry["model_version"], entry["latency_ms"]) == (
        "req-9",
        0,
        "v3",
        5.0,
    )
    assert (entry["prediction"], entry["probabilities"]) == ("yes", {"no": 0.5, "yes": 0.5})


def test_calls_append_in_order(tmp_path):
    log = PredictionLog(tmp_path)
    log("first", "v1", [{"a": 1}, {"a": 2}], [0, 1], None, 1.0)
    log("second", "v1", [{"a": 3}], [1], None, 1.0)
    entries = read_lines(log_file(tmp_path))
    assert [(e["request_id"], e["record"], e["inputs"]["a"]) for e in entries] == [
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
    one(first, "a1", 2, start=1)
    one(second, "b1", 3, start=3)
    one(first, "a2", 1, start=6)
    entries = read_lines(log_file(tmp_path))
    assert [(e["request_id"], e["inputs"]["a"]) for e in entries] == [
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
    real_write, writes = os.write, []

    def counting_write(fd, data):
        if fd == log._fd:
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
    assert [(e["request_id"], e["record"], e["inputs"]) for e in entries] == [
        ("req-x", i, r) for i, r in enumerate(rows)
    ] + [("req-y", i, r) for i, r in enumerate(rows[:5])]


@pytest.mark.parametrize("probabilities", [None, [{"0": 1.0}] * 3], ids=["regression", "classification"])
def test_mismatched_rows_and_answers_write_nothing(tmp_path, probabilities):
    log = PredictionLog(tmp_path)
    with pytest.raises(ValueError):
        log("req", "v1", [{"a": 1}, {"a": 2}], [0], None, 1.0)
    with pytest.raises(ValueError):
        log("req", "v1", [{"a": 1}, {"a": 2}], [0, 1], [{"0": 1.0}] * 3, 1.0)
    assert log_file(tmp_path).read_bytes() == b""


# --- The policy -----------------------------------------------------------------------------------


def test_no_policy_means_the_defaults_and_a_partial_one_keeps_the_rest(tmp_path):
    assert PredictionLog(tmp_path, 0).policy == prediction_log.Policy()
    log = PredictionLog(tmp_path, 1, {"max_bytes": 8192, "fsync": "none"})
    assert (log.policy.max_bytes, log.policy.fsync, log.policy.keep) == (
        8192,
        "none",
        prediction_log.Policy().keep,
    )


def test_the_packaged_params_policy_is_valid_and_sets_every_key(tmp_path):
    import yaml

    policy = yaml.safe_load((ROOT / "params.yaml").read_text())["serving"]["prediction_log"]
    assert set(policy) == {f.name for f in prediction_log.fields(prediction_log.Policy)}
    PredictionLog(tmp_path, 0, policy)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_bytes", 100),
        ("max_bytes", "1 MB"),
        ("max_bytes", True),
        ("keep", 0),
        ("keep", 2.5),
        ("compress", "yes"),
        ("fsync", "always"),
        ("fsync_interval_s", 0),
        ("fsync_interval_s", float("nan")),
        ("outcome_interval_s", -1),
        ("outcome_interval_s", None),
        ("reopen_check_s", -0.5),
        ("reopen_check_s", float("inf")),
    ],
)
def test_a_bad_policy_value_is_refused_naming_its_key(tmp_path, key, value):
    with pytest.raises(ValueError, match=rf"^prediction_log\.{key} must be"):
        PredictionLog(tmp_path, 0, {key: value})


def test_an_unknown_policy_key_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"prediction_log\.max_size is not a policy key"):
        PredictionLog(tmp_path, 0, {"max_size": 4096})


@pytest.mark.parametrize("worker", ["../escape", "a/b", "", "x" * 65, "two words"])
def test_a_worker_name_that_is_not_a_plain_file_name_is_refused(tmp_path, worker):
    with pytest.raises(ValueError, match="worker name"):
        PredictionLog(tmp_path, worker)
    assert not (tmp_path / "escape").exists()


def test_a_folder_that_cannot_be_made_is_log_unavailable_at_start(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(LogUnavailable, match="cannot open the prediction log"):
        PredictionLog(tmp_path / "file" / "log", 0)


# --- Whole lines or nothing -----------------------------------------------------------------------


def test_a_short_write_is_finished_and_the_lines_stay_whole(tmp_path, log_fds):
    log = PredictionLog(tmp_path)
    one(log, "before", 2)
    calls = []

    def short_then_whole(real_write, fd, data):  # the first attempt of each request writes 7 bytes
        calls.append(len(data))
        return real_write(fd, bytes(data[:7]) if len(calls) == 1 else data)

    log_fds(log, short_then_whole)
    one(log, "short", 3, start=10)
    assert len(calls) == 2 and calls[1] == calls[0] - 7
    assert log.healthy
    entries = read_lines(log_file(tmp_path))
    assert [(e["request_id"], e["inputs"]["a"]) for e in entries] == [
        ("before", 0),
        ("before", 1),
        ("short", 10),
        ("short", 11),
        ("short", 12),
    ]


def test_a_short_write_whose_rest_fails_is_cut_back_and_the_next_write_succeeds(tmp_path, log_fds):
    log = PredictionLog(tmp_path)
    one(log, "before", 2)
    size_before = log_file(tmp_path).stat().st_size
    attempts = []

    def half_then_enospc(real_write, fd, data):
        attempts.append(len(data))
        if len(attempts) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    log_fds(log, half_then_enospc)
    with pytest.raises(LogUnavailable, match="ENOSPC"):
        one(log, "torn", 5, start=10)
    assert len(attempts) == 2
    assert log_file(tmp_path).stat().st_size == size_before  # the half line is gone
    assert not log.healthy
    log_fds(log, lambda real_write, fd, data: real_write(fd, data))  # room again
    one(log, "after", 1, start=20)
    assert log.healthy
    assert [e["request_id"] for e in read_lines(log_file(tmp_path))] == ["before", "before", "after"]


def test_when_a_torn_line_cannot_be_cut_back_it_is_ended_so_only_it_is_lost(tmp_path, log_fds, monkeypatch):
    log = PredictionLog(tmp_path)
    one(log, "before", 1)
    state = {"calls": 0}

    def half_then_eio(real_write, fd, data):
        state["calls"] += 1
        if state["calls"] == 1:
            return real_write(fd, bytes(data[:10]))
        raise OSError(5, "Input/output error")

    def ftruncate_fails(fd, length):
        raise OSError(5, "Input/output error")

    log_fds(log, half_then_eio)
    monkeypatch.setattr(prediction_log.os, "ftruncate", ftruncate_fails)
    with pytest.raises(LogUnavailable, match="EIO"):
        one(log, "torn", 2)
    monkeypatch.undo()
    one(log, "after", 2, start=5)
    lines = log_file(tmp_path).read_bytes().split(b"\n")
    assert lines[-1] == b""
    parsed, broken = [], []
    for line in lines[:-1]:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            broken.append(line)
    assert len(broken) == 1 and len(broken[0]) == 10  # the torn prefix, alone on its line
    assert [(e["request_id"], e["inputs"]["a"]) for e in parsed] == [
        ("before", 0),
        ("after", 5),
        ("after", 6),
    ]


def test_a_full_disk_writes_nothing_and_makes_the_log_unhealthy_until_a_write_succeeds(
    tmp_path, log_fds, monkeypatch
):
    monkeypatch.setattr(prediction_log, "PROBE_EVERY_S", 0.0)
    real_write = os.write
    log = PredictionLog(tmp_path, 0, {"outcome_interval_s": 3600})
    one(log, "ok-1")

    def enospc(real_write, fd, data):
        raise OSError(28, "No space left on device")

    log_fds(log, enospc)
    with pytest.raises(LogUnavailable):
        one(log, "refused")
    assert [e["request_id"] for e in read_lines(log_file(tmp_path))] == ["ok-1"]
    monkeypatch.setattr(prediction_log.os, "write", lambda fd, data: enospc(real_write, fd, data))
    assert not log.healthy  # the probe write fails too: still no room
    monkeypatch.setattr(prediction_log.os, "write", real_write)
    assert log.healthy  # a probe write succeeded: ready again, before any request
    one(log, "ok-2")
    log.close()
    (line,) = read_lines(tmp_path / "outcomes" / "outcomes.0.jsonl")
    assert line["counts"] == {"ok": 2}  # the refusal is the caller's to count, as it answers 503


def test_an_unhealthy_log_is_not_probed_more_often_than_its_interval(tmp_path, log_fds):
    log = PredictionLog(tmp_path)
    log_fds(log, lambda real_write, fd, data: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(LogUnavailable):
        one(log, "x")
    log._next_probe = time.monotonic() + 60  # as just after a probe
    assert not log.healthy  # no probe ran: the disk is not even asked


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 64 KB filesystem, as root; skipped elsewhere."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)  # lazy: a failed test may hold it open


def test_a_real_full_filesystem_refuses_whole_requests_and_recovers_when_room_is_made(
    tiny_tmpfs, monkeypatch
):
    monkeypatch.setattr(prediction_log, "PROBE_EVERY_S", 0.0)
    filler = tiny_tmpfs / "filler"
    filler.write_bytes(b"\0" * 16384)
    log = PredictionLog(tiny_tmpfs, 0, {"outcome_interval_s": 3600, "min_free_bytes": 0})
    answered, refused = [], 0
    for i in range(400):
        try:
            one(log, f"r{i}", n=1 + i % 7, start=i)
            answered.append(f"r{i}")
        except LogUnavailable:
            refused += 1
            assert not log.healthy
    assert refused > 0 and answered
    entries = read_lines(log_file(tiny_tmpfs))  # strict: every line whole
    assert sorted({e["request_id"] for e in entries}) == sorted(answered)
    for request_id in answered:  # each answered request has all its records, once
        records = [e["record"] for e in entries if e["request_id"] == request_id]
        assert records == list(range(len(records))) and len(records) == 1 + int(request_id[1:]) % 7
    filler.unlink()
    assert log.healthy
    one(log, "after", 3)
    assert read_lines(log_file(tiny_tmpfs))[-1]["request_id"] == "after"
    log.close()


# --- Rotation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["renamed", "removed"])
def test_a_file_renamed_or_removed_outside_is_replaced_by_a_fresh_one(tmp_path, how):
    log = PredictionLog(tmp_path, 0, {"reopen_check_s": 0})
    path = log_file(tmp_path)
    one(log, "old")
    if how == "renamed":  # what logrotate does, before its `create`
        path.rename(path.with_name("predictions.0.jsonl.1"))
    else:
        path.unlink()
    one(log, "new")
    assert [e["request_id"] for e in read_lines(path)] == ["new"]
    if how == "renamed":
        assert [e["request_id"] for e in read_lines(path.with_name("predictions.0.jsonl.1"))] == ["old"]


def test_a_file_created_by_logrotate_after_the_rename_is_adopted_and_made_private(tmp_path):
    log = PredictionLog(tmp_path, 0, {"reopen_check_s": 0})
    path = log_file(tmp_path)
    one(log, "old")
    path.rename(path.with_name("predictions.0.jsonl.1"))
    path.write_bytes(b"")  # logrotate's `create 0644`
    path.chmod(0o644)
    one(log, "new")
    assert [e["request_id"] for e in read_lines(path)] == ["new"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_rename_check_runs_at_most_every_reopen_check_s(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(prediction_log.time, "monotonic", lambda: clock[0])
    log = PredictionLog(tmp_path, 0, {"reopen_check_s": 1.0})
    path = log_file(tmp_path)
    one(log, "first")  # checks, and schedules the next check for 1001
    path.rename(path.with_name("moved"))
    clock[0] += 0.5
    one(log, "within")  # not checked yet: still the renamed file
    clock[0] += 0.6
    one(log, "after")
    assert [e["request_id"] for e in read_lines(path.with_name("moved"))] == ["first", "within"]
    assert [e["request_id"] for e in read_lines(path)] == ["after"]


def finish(log):
    """Closes the log; close() waits for the background thread's compressions and prunes."""
    log.close()
    assert not log._thread.is_alive()


def rotated(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if log_files.ROTATED.fullmatch(p.name))


def test_past_max_bytes_the_file_is_rotated_compressed_and_every_line_kept_once(tmp_path):
    log = PredictionLog(tmp_path, 0, {"max_bytes": 4096, "keep": 100, "compress": True})
    for i in range(60):
        one(log, f"r{i}", n=3, start=3 * i)
    finish(log)
    files = rotated(log.folder)
    assert len(files) >= 5
    assert all(f.name.endswith(".jsonl.gz") for f in files)
    entries = [e for f in files for e in read_any(f)] + read_lines(log_file(tmp_path))
    assert [e["inputs"]["a"] for e in entries] == list(range(180))  # in order, none lost, none twice
    for f in files:  # each rotated file was rotated by the request that took it past max_bytes
        data = gzip.decompress(f.read_bytes())
        last_request = data[:-1].rsplit(b"\n", 3)[-3:]  # 3 records a request
        assert len(data) - sum(len(line) + 1 for line in last_request) < 4096 <= len(data)


def test_rotation_keeps_only_the_newest_keep_files(tmp_path):
    log = PredictionLog(tmp_path, 0, {"max_bytes": 4096, "keep": 3, "compress": False})
    for i in range(80):
        one(log, f"r{i}", n=3, start=3 * i)
    finish(log)
    files = rotated(log.folder)
    assert len(files) == 3
    kept = [e["inputs"]["a"] for f in files for e in read_any(f)] + [
        e["inputs"]["a"] for e in read_lines(log_file(tmp_path))
    ]
    assert kept == list(range(240 - len(kept), 240))  # the newest lines, contiguous up to the last


def test_prune_counts_a_rotation_once_and_never_touches_active_files(tmp_path):
    folder = tmp_path
    names = [
        "predictions.0.20250101T000000000000Z.jsonl.gz",
        "predictions.1.20250101T000001000000Z.jsonl",
        "predictions.1.20250101T000001000000Z.jsonl.gz",  # mid-compression: same rotation
        "predictions.0.20250101T000002000000Z.jsonl.gz",
        "predictions.1.20250101T000003000000Z.jsonl.gz",
        "predictions.0.jsonl",
        "predictions.1.jsonl",
        "notes.txt",
    ]
    for name in names:
        (folder / name).write_text("x\n")
    deleted = prune(folder, keep=2)
    assert sorted(p.name for p in deleted) == sorted(names[:3])
    assert sorted(p.name for p in folder.iterdir()) == sorted(names[3:])


PRUNER = """
import sys, time
from pathlib import Path
from pipelines.serving.log_files import prune
start = float(sys.argv[2])
while time.time() < start:  # all pruners start together
    pass
prune(Path(sys.argv[1]), 10)
"""


def run_together(script: str, args: list[list[str]]) -> None:
    """One Python process per argument list, each running `script` from the project root."""
    procs = [subprocess.Popen([sys.executable, "-c", script, *a], cwd=ROOT) for a in args]
    for proc in procs:
        assert proc.wait(timeout=120) == 0


def test_workers_pruning_at_once_leave_exactly_keep_files(tmp_path):
    for i in range(200):
        (tmp_path / f"predictions.{i % 4}.20250101T{i:06d}000000Z.jsonl.gz").write_bytes(b"x")
    start = str(time.time() + 2.0)
    run_together(PRUNER, [[str(tmp_path), start]] * 4)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(f"predictions.{i % 4}.20250101T{i:06d}000000Z.jsonl.gz" for i in range(190, 200))


def test_a_restart_finishes_a_rotation_that_a_stop_left_uncompressed(tmp_path):
    folder = tmp_path / "predictions"
    folder.mkdir()
    leftover = folder / "predictions.0.20250101T000000000000Z.jsonl"
    leftover.write_bytes(b'{"request_id": "old"}\n')
    (folder / "predictions.0.20250101T000000000000Z.jsonl.gz.tmp").write_bytes(b"partial")
    other = folder / "predictions.1.20250101T000000000000Z.jsonl"  # another worker's: not ours to touch
    other.write_bytes(b'{"request_id": "other"}\n')
    log = PredictionLog(tmp_path, 0)
    finish(log)
    assert sorted(p.name for p in folder.iterdir()) == [
        "predictions.0.20250101T000000000000Z.jsonl.gz",
        "predictions.0.jsonl",
        "predictions.1.20250101T000000000000Z.jsonl",
    ]
    assert read_any(folder / "predictions.0.20250101T000000000000Z.jsonl.gz") == [{"request_id": "old"}]


# --- Permissions ----------------------------------------------------------------------------------


@pytest.fixture
def permissive_umask():
    old = os.umask(0)
    yield
    os.umask(old)


def test_files_are_0600_and_folders_0700_under_a_permissive_umask(tmp_path, permissive_umask):
    log = PredictionLog(tmp_path / "log", 0, {"max_bytes": 4096, "keep": 10})
    for i in range(30):
        one(log, f"r{i}", n=3)
    log.outcome("unauthorized")
    finish(log)
    files = [p for p in (tmp_path / "log").rglob("*") if p.is_file()]
    folders = [p for p in (tmp_path / "log").rglob("*") if p.is_dir()] + [tmp_path / "log"]
    assert any(p.name.endswith(".gz") for p in files) and any(p.parent.name == "outcomes" for p in files)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folders} == {p.name: 0o700 for p in folders}


def test_an_existing_world_readable_log_is_made_private_when_opened(tmp_path, permissive_umask):
    path = log_file(tmp_path)
    path.parent.mkdir(parents=True, mode=0o755)
    path.write_text('{"request_id": "old"}\n')
    path.chmod(0o644)
    PredictionLog(tmp_path, 0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


# --- Concurrent workers ---------------------------------------------------------------------------


WRITER = """
import sys
from pipelines.serving.prediction_log import PredictionLog
directory, worker, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
own = PredictionLog(directory, worker, {"max_bytes": 16384, "keep": 1000})
shared = PredictionLog(directory, "shared", {"max_bytes": 2**40})
for i in range(requests):
    rows = [{"w": worker, "i": i, "text": "x\\n\\"é" * (i % 13)}] * (1 + i % 9)
    own(f"{worker}-{i}", "v1", rows, [i] * len(rows), None, 1.0)
    shared(f"{worker}-{i}", "v1", rows, [i] * len(rows), None, 1.0)
own.close()
shared.close()
"""


def test_concurrent_worker_processes_write_whole_lines_to_their_own_and_a_shared_file(tmp_path):
    run_together(WRITER, [[str(tmp_path), str(w), "300"] for w in range(4)])
    folder = tmp_path / "predictions"
    assert not list(folder.glob("*.tmp"))  # each process's close() let its compressions finish
    expected = {(f"{w}-{i}", r) for w in range(4) for i in range(300) for r in range(1 + i % 9)}
    shared = read_lines(log_file(tmp_path, "shared"))
    assert sorted((e["request_id"], e["record"]) for e in shared) == sorted(expected)
    assert all(e["inputs"]["text"] == 'x\n"é' * (e["inputs"]["i"] % 13) for e in shared)
    for w in range(4):
        rotated_own = [f for f in folder.glob(f"predictions.{w}.*") if f.name != f"predictions.{w}.jsonl"]
        assert rotated_own and all(f.name.endswith(".gz") for f in rotated_own)
        own = [e for f in rotated_own for e in read_any(f)] + read_lines(log_file(tmp_path, w))
        assert sorted((e["request_id"], e["record"]) for e in own) == sorted(
            k for k in expected if k[0].startswith(f"{w}-")
        )


# --- Outcome counts -------------------------------------------------------------------------------


def test_outcomes_are_counted_per_window_and_written_once_a_later_window_starts(tmp_path, monkeypatch):
    clock = [1_699_999_980.0]  # a multiple of 60 s: 2023-11-14T22:13:00Z
    monkeypatch.setattr(prediction_log.time, "time", lambda: clock[0])
    log = PredictionLog(tmp_path, 5, {"outcome_interval_s": 60})
    path = tmp_path / "outcomes" / "outcomes.5.jsonl"
    for kind in ["unauthorized", "unauthorized", "body_too_large", "invalid", "overloaded"]:
        log.outcome(kind, version="v1")
    one(log, "ok-1")
    clock[0] += 59.9
    log.outcome("invalid", version="v1")
    assert not path.exists() or path.read_bytes() == b""  # nothing written inside the window
    clock[0] += 0.2  # the next window
    log.outcome("unauthorized", version="v1")
    assert read_lines(path) == [
        {
            "worker": "5",
            "window_start": "2023-11-14T22:13:00+00:00",
            "window_s": 60.0,
            "version": "v1",  # the version the requests were answered or refused under
            "counts": {"unauthorized": 2, "body_too_large": 1, "invalid": 2, "overloaded": 1, "ok": 1},
            "by_role": {"champion": {"ok": 1}},  # the answered request, by the arm that answered
        }
    ]
    clock[0] += 3600
    log.close()  # closing writes the window in progress
    assert [line["counts"] for line in read_lines(path)][1:] == [{"unauthorized": 1}]


def test_outcome_lines_hold_counts_never_inputs_and_odd_kinds_are_bounded(tmp_path):
    log = PredictionLog(tmp_path, 0)
    one(log, "secret-request", 1, start=424242)
    log.outcome("x" * 500)
    log.outcome("not an identifier")
    log.close()
    text = (tmp_path / "outcomes" / "outcomes.0.jsonl").read_text()
    assert "424242" not in text and "secret-request" not in text
    answered, refused = read_lines(tmp_path / "outcomes" / "outcomes.0.jsonl")
    assert answered["counts"] == {"ok": 1} and refused["counts"] == {"other": 2}


def test_outcome_counts_that_cannot_be_written_are_kept_for_the_next_window(tmp_path, monkeypatch):
    clock = [1_700_000_000.0]
    monkeypatch.setattr(prediction_log.time, "time", lambda: clock[0])
    log = PredictionLog(tmp_path, 0, {"outcome_interval_s": 60})
    real_open = log_lines.open_private

    def refuse_outcomes(path, *args):
        if "outcomes" in str(path):
            raise OSError(28, "No space left on device")
        return real_open(path, *args)

    monkeypatch.setattr(log_lines, "open_private", refuse_outcomes)
    log.outcome("unauthorized")
    clock[0] += 60
    log.outcome("invalid")  # the first window's line cannot be written: kept
    monkeypatch.setattr(log_lines, "open_private", real_open)
    clock[0] += 60
    log.outcome("overloaded")
    lines = read_lines(tmp_path / "outcomes" / "outcomes.0.jsonl")
    assert [line["counts"] for line in lines] == [{"unauthorized": 1}, {"invalid": 1}]


def test_the_last_outcome_window_is_written_when_the_process_exits(tmp_path):
    code = (
        "import sys; from pipelines.serving.prediction_log import PredictionLog\n"
        "log = PredictionLog(sys.argv[1], 2)\n"
        "log.outcome('unauthorized'); log.outcome('overloaded'); log.outcome('overloaded')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, check=True, timeout=60)
    (line,) = read_lines(tmp_path / "outcomes" / "outcomes.2.jsonl")
    assert line["counts"] == {"unauthorized": 1, "overloaded": 2}


# --- fsync policy ---------------------------------------------------------------------------------


@pytest.fixture
def syncs(monkeypatch):
    calls = []
    real = os.fdatasync

    def counting(fd):
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(prediction_log.os, "fdatasync", counting)
    return calls


def test_fsync_every_write_syncs_each_request_before_returning(tmp_path, syncs):
    log = PredictionLog(tmp_path, 0, {"fsync": "every_write"})
    for i in range(5):
        one(log, f"r{i}")
    assert syncs.count(log._fd) == 5


def test_fsync_interval_syncs_in_the_background_not_per_request(tmp_path, syncs):
    log = PredictionLog(tmp_path, 0, {"fsync": "interval", "fsync_interval_s": 0.05})
    for i in range(50):
        one(log, f"r{i}")
    assert syncs.count(log._fd) < 5  # not one per request
    until(lambda: syncs.count(log._fd) >= 2, "a background sync")


def test_fsync_none_never_syncs(tmp_path, syncs):
    log = PredictionLog(tmp_path, 0, {"fsync": "none"})
    for i in range(5):
        one(log, f"r{i}")
    log.close()
    time.sleep(0.1)
    assert syncs == []


def test_a_failed_fsync_every_write_takes_the_request_back_out(tmp_path, monkeypatch):
    log = PredictionLog(tmp_path, 0, {"fsync": "every_write"})
    one(log, "kept")

    def eio(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(prediction_log.os, "fdatasync", eio)
    with pytest.raises(LogUnavailable, match="EIO"):
        one(log, "unsynced", 3)
    assert not log.healthy
    assert [e["request_id"] for e in read_lines(log_file(tmp_path))] == ["kept"]


def test_too_little_free_space_makes_every_log_on_the_disk_unready_before_a_write_fails(
    tmp_path, monkeypatch
):
    logs = [PredictionLog(tmp_path, worker, {"min_free_bytes": 1_000_000}) for worker in (0, 1)]
    real = os.statvfs
    free_blocks = {"n": 10_000}  # blocks of 4096 bytes: 41 MB free

    class Disk:
        def __init__(self, path):
            self.f_frsize = 4096
            self.f_bavail = free_blocks["n"]
            self.real = real(path)

    monkeypatch.setattr(os, "statvfs", Disk)
    assert all(log.healthy for log in logs)
    free_blocks["n"] = 200  # 819,200 bytes free: under the policy's 1,000,000
    assert not any(log.healthy for log in logs)  # neither worker has failed a write yet
    free_blocks["n"] = 245  # 1,003,520 bytes
    assert all(log.healthy for log in logs)
    for log in logs:
        log.close()


def test_shadow_lines_count_for_their_role_only_and_roles_are_kept_apart(tmp_path, monkeypatch):
    clock = [1_699_999_980.0]
    monkeypatch.setattr(prediction_log.time, "time", lambda: clock[0])
    log = PredictionLog(tmp_path, 2, {"outcome_interval_s": 60})
    rows = [{"a": 1}]
    log("r1", "3", rows, ["x"], None, 1.0, "challenger")
    log("r1", "2", rows, ["y"], None, 0.5, "shadow")
    log.outcome("error", "challenger", "3")
    log.outcome("dropped", "shadow")
    log.outcome("unauthorized", version="2")  # refused before routing: under the champion
    clock[0] += 60
    log.outcome("unauthorized", version="2")
    lines = read_lines(log_file(tmp_path, 2))
    assert [(e["request_id"], e["model_version"], e["role"]) for e in lines] == [
        ("r1", "3", "challenger"),
        ("r1", "2", "shadow"),
    ]
    assert lines[0]["inputs"] == {"a": 1} and "inputs" not in lines[1]  # the answered line holds them
    challenger, champion = read_lines(tmp_path / "outcomes" / "outcomes.2.jsonl")
    # One request answered, one failed, one refused: shadow scoring is not a request. Each
    # request counts under the version it was answered or refused under.
    assert (challenger["version"], challenger["counts"]) == ("3", {"ok": 1, "error": 1})
    assert (champion["version"], champion["counts"]) == ("2", {"unauthorized": 1})
    assert challenger["by_role"] == {"challenger": {"ok": 1, "error": 1}, "shadow": {"ok": 1, "dropped": 1}}
    assert "by_role" not in champion
