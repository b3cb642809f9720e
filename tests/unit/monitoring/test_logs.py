"""pipelines/monitoring/logs.py: the prediction log read back, from files the real writer made
(PredictionLog), including a rotated .gz file and two workers; and the one-line errors."""

import gzip
import itertools
import json
import os
import re
import shutil
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from pipelines.monitoring import logs
from pipelines.monitoring.errors import MonitorError
from pipelines.serving import log_files, log_lines
from pipelines.serving.prediction_log import PredictionLog

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    """The writer's clock (log_lines.datetime), set by the test: each request's timestamp is known."""

    now_value = T0

    @classmethod
    def install(cls, monkeypatch):
        class Fixed(datetime):
            @classmethod
            def now(cls_, tz=None):
                return cls.now_value

        monkeypatch.setattr(log_lines, "datetime", Fixed)
        return cls


def request(log, n, i, version="1"):
    rows = [
        {"age": float(i + k), "city": "paris" if k % 2 else None, "timestamp": "feature"} for k in range(n)
    ]
    probabilities = [{"no": 0.25, "yes": 0.75}] * n
    log(f"req-{log.worker}-{i}", version, rows, ["yes"] * n, probabilities, 1.5 + i)


@pytest.fixture
def two_workers(tmp_path, monkeypatch):
    """Worker 0 writes enough to rotate (and gzip) its file; worker 1 writes 5 requests."""
    clock = Clock.install(monkeypatch)
    w0 = PredictionLog(tmp_path, 0, {"max_bytes": 4096, "fsync": "none"})
    w1 = PredictionLog(tmp_path, "1", {"fsync": "none"})
    for i in range(30):
        clock.now_value = T0 + timedelta(seconds=i)
        request(w0, 3, i)
    for i in range(5):
        clock.now_value = T0 + timedelta(seconds=100 + i)
        request(w1, 2, i, version="2")
    w0.close()  # waits for the rotated files' compression
    w1.close()
    return tmp_path


def test_every_record_once_across_rotated_gz_files_and_workers(two_workers):
    names = [path.name for _, path in logs.log_files(two_workers)]
    assert any(name.endswith(".jsonl.gz") for name in names), names
    assert names[-2:] == ["predictions.0.jsonl", "predictions.1.jsonl"]  # active files come last
    frame = pd.concat(logs.iter_frames(two_workers), ignore_index=True)
    assert len(frame) == 30 * 3 + 5 * 2
    assert sorted(set(frame["request_id"])) == sorted(
        [f"req-0-{i}" for i in range(30)] + [f"req-1-{i}" for i in range(5)]
    )
    assert not frame.duplicated(["request_id", "record"]).any()
    assert str(frame["timestamp"].dt.tz) == "UTC"
    first = frame[frame["request_id"] == "req-0-7"]
    assert list(first["record"]) == [0, 1, 2]
    assert (first["timestamp"] == pd.Timestamp(T0 + timedelta(seconds=7))).all()
    assert list(first["inputs.age"]) == [7.0, 8.0, 9.0]
    # The input named `timestamp` stays an input: it cannot replace the log's own field.
    assert (first["inputs.timestamp"] == "feature").all()
    assert (first["latency_ms"] == 8.5).all() and (first["probabilities.yes"] == 0.75).all()
    assert set(frame.loc[frame["worker"] == "1", "model_version"]) == {"2"}
    assert logs.input_columns(frame) == ["age", "city", "timestamp"]
    assert logs.class_columns(frame) == ["no", "yes"]


def test_a_rotation_caught_between_plain_and_gz_counts_once(two_workers):
    gz = next(path for _, path in logs.log_files(two_workers) if path.name.endswith(".gz"))
    plain = gz.with_name(gz.name.removesuffix(".gz"))
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    frame = pd.concat(logs.iter_frames(two_workers), ignore_index=True)
    assert len(frame) == 30 * 3 + 5 * 2


def test_a_column_null_in_the_whole_first_block_is_read_without_duplicates(tmp_path, monkeypatch):
    log = PredictionLog(tmp_path, 0, {"fsync": "none"})
    for i in range(200):  # the optional column is null in the first 100 requests, text afterwards
        log(f"r{i}", "1", [{"x": 1.0, "note": None if i < 100 else "set"}], [1.0], None, 1.0)
    log.close()
    frame = pd.concat(logs.iter_frames(tmp_path, block_bytes=4096), ignore_index=True)
    assert len(frame) == 200 and frame["request_id"].is_unique
    assert (frame["inputs.note"].iloc[100:] == "set").all()


@pytest.mark.parametrize("block_bytes", [logs.BLOCK_BYTES, 300])  # 300: the line is in a later chunk
def test_a_corrupt_line_names_the_file_and_line_and_never_its_content(two_workers, block_bytes):
    path = two_workers / "predictions" / "predictions.1.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    secret = b'{"request_id": "SECRET-CONTENT", oops\n'
    path.write_bytes(b"".join([*lines[:4], secret, *lines[4:]]))
    with pytest.raises(MonitorError) as caught:
        list(logs.iter_frames(two_workers, block_bytes=block_bytes))
    message = str(caught.value)
    assert message == (
        "predictions/predictions.1.jsonl: a corrupt line at line 5 (not a JSON object with the log's fields)"
    )
    assert "SECRET" not in message and "\n" not in message


def test_a_line_missing_a_field_is_corrupt(tmp_path):
    folder = tmp_path / "predictions"
    folder.mkdir()
    good = {"request_id": "a", "record": 0, "timestamp": T0.isoformat(), "model_version": "1"}
    lines = [{**good, "latency_ms": 1.0, "prediction": 1}, {**good, "prediction": 1}]
    (folder / "predictions.0.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(MonitorError, match=r"predictions\.0\.jsonl: a line without 'latency_ms' at line 2"):
        list(logs.iter_frames(tmp_path))


def test_a_truncated_gz_file_is_named(two_workers):
    gz = next(path for _, path in logs.log_files(two_workers) if path.name.endswith(".gz"))
    gz.write_bytes(gz.read_bytes()[:-20])
    with pytest.raises(MonitorError, match=rf"predictions/{gz.name}: "):
        list(logs.iter_frames(two_workers))


def test_missing_folder_and_empty_log_are_one_line_errors(tmp_path):
    with pytest.raises(MonitorError, match=r"^no prediction log folder at .*predictions$"):
        list(logs.iter_frames(tmp_path / "nowhere"))
    PredictionLog(tmp_path, 0).close()  # the service started and answered nothing
    with pytest.raises(MonitorError, match=r"holds no records$"):
        list(logs.iter_frames(tmp_path))


def test_recent_keeps_the_last_rows_and_the_span_in_time_order(two_workers):
    everything = pd.concat(logs.iter_frames(two_workers), ignore_index=True)
    # Worker 1's 10 records are the newest (t0+100..104 s), then worker 0's last ones (t0+29 s).
    last = logs.recent(logs.iter_frames(two_workers, block_bytes=4096), rows=13)
    assert list(last["request_id"])[:3] == ["req-0-29"] * 3
    assert list(last["request_id"])[3:] == [f"req-1-{i}" for i in range(5) for _ in range(2)]
    span = logs.recent(logs.iter_frames(two_workers), span=timedelta(seconds=3))
    assert set(span["request_id"]) == {"req-1-1", "req-1-2", "req-1-3", "req-1-4"}
    both = logs.recent(logs.iter_frames(two_workers), rows=5, span=timedelta(seconds=60))
    assert list(both["request_id"]) == ["req-1-2", "req-1-3", "req-1-3", "req-1-4", "req-1-4"]
    assert list(both["record"]) == [1, 0, 1, 0, 1]
    assert len(everything) == 100


def test_outcome_counts_are_read_per_worker_and_kind(tmp_path):
    w0 = PredictionLog(tmp_path, 0, {"fsync": "none"})
    w1 = PredictionLog(tmp_path, 1, {"fsync": "none"})
    for _ in range(3):
        w0.outcome("unauthorized")
    w0("r", "1", [{"x": 1}], [1], None, 1.0)
    w1.outcome("overloaded")
    w0.close()
    w1.close()
    counts = logs.read_outcomes(tmp_path)
    got = counts.groupby(["worker", "outcome"])["count"].sum().to_dict()
    assert got == {("0", "ok"): 1, ("0", "unauthorized"): 3, ("1", "overloaded"): 1}
    assert str(counts["window_start"].dt.tz) == "UTC"


def test_outcome_counts_carry_the_version_that_answered_or_refused(tmp_path):
    w0 = PredictionLog(tmp_path, 0, {"fsync": "none"})
    w0.outcome("unauthorized", version="3")
    w0.outcome("invalid", version="3")
    w0("r", "4", [{"x": 1}], [1], None, 1.0, role="challenger")
    w0.outcome("overloaded", role="challenger", version="4")
    w0.outcome("malformed")  # a caller that names none (before versioned counts)
    w0.close()
    lines = [json.loads(x) for x in (tmp_path / "outcomes" / "outcomes.0.jsonl").read_text().splitlines()]
    assert [line.get("version") for line in lines] == ["3", "4", None]
    assert sum("by_role" in line for line in lines) == 1
    counts = logs.read_outcomes(tmp_path)
    got = {
        (r.version if isinstance(r.version, str) else None, r.outcome): r.count for r in counts.itertuples()
    }
    assert got == {
        ("3", "unauthorized"): 1, ("3", "invalid"): 1, ("4", "ok"): 1, ("4", "overloaded"): 1,
        (None, "malformed"): 1,
    }  # fmt: skip
    roles = logs.read_role_outcomes(tmp_path)
    assert roles.groupby(["role", "outcome"])["count"].sum().to_dict() == {
        ("challenger", "ok"): 1, ("challenger", "overloaded"): 1,
    }  # fmt: skip


@pytest.mark.parametrize("version", [7, "", "v" * 65, ["1"]])
def test_an_outcome_line_with_a_bad_version_is_corrupt(tmp_path, version):
    folder = tmp_path / "outcomes"
    folder.mkdir()
    line = {"worker": "0", "window_start": "2025-01-01T00:00:00+00:00", "window_s": 60, "version": version}
    (folder / "outcomes.0.jsonl").write_text(json.dumps({**line, "counts": {"ok": 1}}) + "\n")
    with pytest.raises(MonitorError, match=r"a corrupt line at line 1"):
        logs.read_outcomes(tmp_path)


def test_a_corrupt_outcome_line_names_file_and_line(tmp_path):
    folder = tmp_path / "outcomes"
    folder.mkdir()
    (folder / "outcomes.0.jsonl").write_text(
        '{"worker": "0", "window_start": "x", "window_s": 60, "counts": {}}\nnope\n'
    )
    with pytest.raises(MonitorError, match=r"^outcomes/outcomes\.0\.jsonl: a corrupt line at line 2"):
        logs.read_outcomes(tmp_path)
    shutil.rmtree(folder)
    assert logs.read_outcomes(tmp_path).empty  # no outcome written yet is not an error


def test_only_the_fields_asked_for_are_parsed(two_workers):
    ops = pd.concat(logs.iter_frames(two_workers, only=()), ignore_index=True)
    assert set(ops.columns) == {*logs.FIELDS.names, "worker"} and len(ops) == 100
    joined = pd.concat(logs.iter_frames(two_workers, only=("prediction", "probabilities")), ignore_index=True)
    assert set(joined.columns) == {
        *logs.FIELDS.names,
        "worker",
        "prediction",
        "probabilities.no",
        "probabilities.yes",
    }
    full = pd.concat(logs.iter_frames(two_workers), ignore_index=True)
    pd.testing.assert_frame_equal(joined, full[joined.columns])


def test_a_type_unlike_the_first_lines_is_read_by_inference(tmp_path):
    log = PredictionLog(tmp_path, 0, {"fsync": "none"})
    for i in range(300):  # an int prediction first, floats later: valid JSON, not what line 1 says
        log(f"r{i}", "1", [{"x": 1.0, "note": None if i < 200 else "set"}], [1 if i == 0 else 1.5], None, 1.0)
    log.close()
    for only in (("prediction",), ("prediction", "inputs")):
        frame = pd.concat(logs.iter_frames(tmp_path, block_bytes=4096, only=only), ignore_index=True)
        assert len(frame) == 300 and frame["request_id"].is_unique
        assert list(frame["prediction"].iloc[:2]) == [1.0, 1.5]
    assert (frame["inputs.note"].iloc[200:] == "set").all()


# --- the cache of parsed rotated files (<log dir>/cache/) ---


@pytest.fixture
def rotated(tmp_path, monkeypatch):
    """Worker 0 rotates into .gz files, worker 2 into plain ones (compress off), worker 1 never."""
    clock = Clock.install(monkeypatch)
    w0 = PredictionLog(tmp_path, 0, {"max_bytes": 4096, "fsync": "none"})
    w2 = PredictionLog(tmp_path, 2, {"max_bytes": 4096, "fsync": "none", "compress": False})
    w1 = PredictionLog(tmp_path, 1, {"fsync": "none"})
    for i in range(30):
        clock.now_value = T0 + timedelta(seconds=i)
        request(w0, 3, i)
        request(w2, 2, i, version="3")
    for i in range(5):
        clock.now_value = T0 + timedelta(seconds=100 + i)
        request(w1, 2, i, version="2")
    for log in (w0, w1, w2):
        log.close()
    return tmp_path


def rotated_names(root):
    return {path.name for path in (root / "predictions").iterdir() if log_files.ROTATED.fullmatch(path.name)}


def entries(root):
    return {path.name for path in (root / "cache").iterdir()}


def opened(monkeypatch):
    """The names of the files parsed from now on (a recording wrapper; the parse itself is real)."""
    names = []
    real = logs._open

    def recording(path):
        names.append(path.name)
        return real(path)

    monkeypatch.setattr(logs, "_open", recording)
    return names


def test_cached_frames_are_the_parsed_frames_and_active_files_are_never_cached(rotated, monkeypatch):
    names = rotated_names(rotated)
    assert any(n.endswith(".gz") for n in names) and any(n.endswith(".jsonl") for n in names), names
    for only in (None, (), ("prediction", "probabilities"), ("probabilities", "inputs")):
        parsed = list(logs.iter_frames(rotated, only=only, cache=False))
        assert not (rotated / "cache").exists()  # off means off: nothing written
        first = list(logs.iter_frames(rotated, only=only))  # fills the cache
        parses = opened(monkeypatch)
        again = list(logs.iter_frames(rotated, only=only))  # from the cache
        monkeypatch.undo()
        # Only the active files are parsed (twice where a type inferred from line 1 fails); an
        # active file left empty by a rotation on its last write has nothing to parse.
        active = {f"predictions.{w}.jsonl" for w in range(3)}
        assert set(parses) == {n for n in active if (rotated / "predictions" / n).stat().st_size}
        assert set(parses)
        for frames in (first, again):
            assert len(frames) == len(parsed)
            for got, want in zip(frames, parsed, strict=True):
                pd.testing.assert_frame_equal(got, want)
        shutil.rmtree(rotated / "cache")
    assert list(parsed[0].columns[5:8]) == ["probabilities.no", "probabilities.yes", "inputs.age"]
    list(logs.iter_frames(rotated))
    assert entries(rotated) == {f"{name}.arrow" for name in names}  # the active files have none
    folder = (rotated / "cache").stat().st_mode & 0o777
    assert folder == 0o700 and {(p.stat().st_mode & 0o777) for p in (rotated / "cache").iterdir()} == {0o600}


def rewrite(path, lines):
    data = b"".join(lines)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def source_lines(path):
    return (
        gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    ).splitlines(keepends=True)


def test_an_entry_whose_source_changed_is_rebuilt(rotated):
    list(logs.iter_frames(rotated))
    gz = sorted(p for p in (rotated / "predictions").iterdir() if p.name.endswith(".gz"))[0]
    lines = source_lines(gz)
    rewrite(gz, lines[: len(lines) // 2])  # other content, other size
    frame = pd.concat(logs.iter_frames(rotated), ignore_index=True)
    pd.testing.assert_frame_equal(frame, pd.concat(logs.iter_frames(rotated, cache=False), ignore_index=True))
    kept = {json.loads(line)["request_id"] for line in lines[: len(lines) // 2]}
    gone = {json.loads(line)["request_id"] for line in lines[len(lines) // 2 :]} - kept
    assert gone and not gone & set(frame["request_id"]) and kept <= set(frame["request_id"])
    # The entry was rewritten from the new file: it holds its lines, not the old ones.
    assert ipc.open_file(str(rotated / "cache" / f"{gz.name}.arrow")).read_all().num_rows == len(lines) // 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_entry_is_ignored_and_rebuilt(rotated, damage):
    expected = pd.concat(logs.iter_frames(rotated, cache=False), ignore_index=True)
    list(logs.iter_frames(rotated))
    entry = sorted((rotated / "cache").iterdir())[0]
    data = entry.read_bytes()
    entry.write_bytes(
        {"garbage": b"\x00junk" * 100, "truncated": data[: len(data) // 2], "empty": b""}[damage]
    )
    pd.testing.assert_frame_equal(pd.concat(logs.iter_frames(rotated), ignore_index=True), expected)
    assert entry.read_bytes() == data  # rebuilt: the same bytes as the first build


def test_an_entry_damaged_after_its_first_batch_gives_each_row_once(rotated):
    expected = pd.concat(logs.iter_frames(rotated, cache=False), ignore_index=True)
    list(logs.iter_frames(rotated, block_bytes=1024))  # entries of several batches
    entry = rotated / "cache" / sorted(entries(rotated))[0]
    reader = ipc.open_file(str(entry))
    assert reader.num_record_batches > 1
    good = reader.get_batch(0)
    rest = pa.Table.from_batches([reader.get_batch(i) for i in range(1, reader.num_record_batches)])
    broken = rest.set_column(0, "request_id", pa.nulls(rest.num_rows, pa.string())).combine_chunks()
    with ipc.new_file(str(entry), reader.schema) as writer:  # the same key: only the data is bad
        writer.write_batch(good)
        writer.write_table(broken)
    pd.testing.assert_frame_equal(pd.concat(logs.iter_frames(rotated), ignore_index=True), expected)
    assert not entry.exists()  # dropped; the next read rebuilds it
    list(logs.iter_frames(rotated))
    assert ipc.open_file(str(entry)).read_all().column("request_id").null_count == 0


def test_a_cache_folder_that_cannot_be_written_leaves_reading_as_it_was(rotated):
    expected = pd.concat(logs.iter_frames(rotated, cache=False), ignore_index=True)
    (rotated / "cache").write_text("not a folder")  # cannot be made, whoever runs the test
    pd.testing.assert_frame_equal(pd.concat(logs.iter_frames(rotated), ignore_index=True), expected)
    (rotated / "cache").unlink()
    (rotated / "cache").mkdir(mode=0o500)
    try:
        if os.access(rotated / "cache", os.W_OK):
            pytest.skip("running as root: chmod 0500 does not stop writes")
        pd.testing.assert_frame_equal(pd.concat(logs.iter_frames(rotated), ignore_index=True), expected)
        assert entries(rotated) == set()
    finally:
        (rotated / "cache").chmod(0o700)


def test_the_entry_of_a_file_the_service_pruned_is_deleted(rotated):
    list(logs.iter_frames(rotated))
    before = rotated_names(rotated)
    pruned = log_files.prune(rotated / "predictions", keep=2)  # the service's own pruning
    assert pruned
    frame = pd.concat(logs.iter_frames(rotated), ignore_index=True)
    assert entries(rotated) == {f"{name}.arrow" for name in rotated_names(rotated)}
    assert rotated_names(rotated) < before and len(entries(rotated)) == 2
    pd.testing.assert_frame_equal(frame, pd.concat(logs.iter_frames(rotated, cache=False), ignore_index=True))


def test_a_corrupt_rotated_file_raises_and_is_never_cached(rotated):
    list(logs.iter_frames(rotated))  # its entry exists, from before the damage
    gz = sorted(p for p in (rotated / "predictions").iterdir() if p.name.endswith(".gz"))[0]
    lines = source_lines(gz)
    rewrite(gz, [*lines[:4], b'{"request_id": "x", oops\n', *lines[4:]])
    for _ in range(2):
        with pytest.raises(
            MonitorError, match=rf"^predictions/{re.escape(gz.name)}: a corrupt line at line 5 "
        ):
            list(logs.iter_frames(rotated))
        assert f"{gz.name}.arrow" not in entries(rotated)


def test_a_rotated_file_whose_types_change_is_cached_with_one_set_of_types(tmp_path):
    log = PredictionLog(tmp_path, 0, {"max_bytes": 30_000, "fsync": "none"})
    for i in range(300):  # an int prediction first, floats later; a note null, then text
        log(f"r{i}", "1", [{"x": 1.0, "note": None if i < 150 else "set"}], [1 if i == 0 else 1.5], None, 1.0)
    log.close()
    (rotated_file,) = (tmp_path / "predictions").glob("predictions.0.*.jsonl.gz")
    lines = [json.loads(line) for line in source_lines(rotated_file)]
    assert 150 < len(lines) < 300  # the change is inside the rotated file
    for only in (None, ("prediction", "inputs")):
        frames = list(logs.iter_frames(tmp_path, block_bytes=4096, only=only))
        ends = list(itertools.accumulate(len(f) for f in frames))
        cached = frames[: ends.index(len(lines)) + 1]  # the rotated file's frames come first
        assert (tmp_path / "cache" / f"{rotated_file.name}.arrow").exists()
        assert all(f["prediction"].dtype == "float64" for f in cached)
        assert len({str(f["inputs.note"].dtype) for f in cached}) == 1
        frame = pd.concat(cached, ignore_index=True)
        assert list(frame["request_id"]) == [line["request_id"] for line in lines]
        assert list(frame["prediction"]) == [float(line["prediction"]) for line in lines]
        notes = [line["inputs"]["note"] for line in lines]
        assert [None if pd.isna(n) else n for n in frame["inputs.note"]] == notes
