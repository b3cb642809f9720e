"""The prediction log: every answered record as a JSON line, and refused requests as counts.

Layout under the log folder (`$PREDICTION_LOG_DIR`), folders 0700 and files 0600:

    predictions/predictions.<worker>.jsonl                    the active file, one per worker
    predictions/predictions.<worker>.<UTC stamp>.jsonl[.gz]   rotated by size, then compressed
    outcomes/outcomes.<worker>.jsonl                          request counts by outcome, per window

The policy (rotation, retention, fsync, windows) is `serving.prediction_log` in params.yaml,
packaged into meta.json's `service`; docs/serving.md ("Prediction log") explains each choice.
"""

from __future__ import annotations

import atexit
import errno
import gzip
import logging
import math
import os
import queue
import re
import shutil
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic_core import to_json

log = logging.getLogger("tabular_mlops.prediction_log")

FILE_MODE = 0o600  # the lines hold raw inputs: owner only, whatever the umask
DIR_MODE = 0o700
FSYNC_MODES = ("none", "interval", "every_write")
GZIP_LEVEL = 1  # measured on these lines: 8.6x smaller at 81 MB/s (level 6: 12.9x at 33 MB/s)
CLOSE_WAIT_S = 10.0  # close() waits this long for a rotated file's compression to finish
PROBE_EVERY_S = 1.0  # an unhealthy log tries a probe write at most this often, when asked
WORKER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
ROTATED = re.compile(
    r"predictions\.(?P<worker>[A-Za-z0-9_-]{1,64})\.(?P<stamp>\d{8}T\d{12}Z)\.jsonl(?:\.gz)?"
)


class LogUnavailable(Exception):
    """The log could not take a request's lines whole: the request must not be answered as ok."""


class TornLine(OSError):
    """A short write could neither be finished nor cut back: the file ends inside a line."""


@dataclass(frozen=True)
class Policy:
    """`serving.prediction_log` in params.yaml. These defaults serve bundles packaged without one."""

    max_bytes: int = 100 * 2**20  # a worker's active file is rotated once it passes this size
    keep: int = 100  # rotated files kept in the folder, all workers together; older ones are deleted
    compress: bool = True  # gzip rotated files, in a background thread
    fsync: str = "interval"  # none | interval | every_write
    fsync_interval_s: float = 1.0
    outcome_interval_s: float = 60.0  # one outcomes line per worker per window with requests
    reopen_check_s: float = 1.0  # how often to check that the file was not renamed or removed
    min_free_bytes: int = 16 * 2**20  # below this much free space on the log's disk, not ready

    @classmethod
    def from_mapping(cls, policy: Mapping[str, Any] | None) -> Policy:
        """The policy with its values checked; a key it lacks takes the default above."""
        if policy is None:
            return cls()
        if not isinstance(policy, Mapping):
            raise ValueError("prediction_log must be a mapping of policy keys")
        known = {f.name for f in fields(cls)}
        for key in policy:
            if key not in known:
                raise ValueError(
                    f"prediction_log.{key} is not a policy key (known: {', '.join(sorted(known))})"
                )
        values = {key: _checked(key, value) for key, value in policy.items()}
        return cls(**values)


def _checked(key: str, value: Any) -> Any:
    """The value if it is valid for `key`, else a ValueError naming the key and the rule."""
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    integer = isinstance(value, int) and not isinstance(value, bool)
    rules = {
        "max_bytes": (integer and value >= 4096, "an integer of at least 4096"),
        "keep": (integer and value >= 1, "an integer of at least 1"),
        "compress": (isinstance(value, bool), "true or false"),
        "fsync": (value in FSYNC_MODES, " | ".join(FSYNC_MODES)),
        "fsync_interval_s": (number and value > 0, "a number of seconds above 0"),
        "outcome_interval_s": (number and value > 0, "a number of seconds above 0"),
        "reopen_check_s": (number and value >= 0, "a number of seconds, 0 or more"),
        "min_free_bytes": (integer and value >= 0, "an integer of bytes, 0 or more"),
    }
    valid, rule = rules[key]
    if not valid:
        raise ValueError(f"prediction_log.{key} must be {rule}")
    return float(value) if key.endswith("_s") else value


def encode(
    request_id: str,
    version: str,
    rows: Sequence[Mapping[str, Any]],
    predictions: Sequence[Any],
    probabilities: Sequence[Mapping[str, float]] | None,
    latency_ms: float,
) -> bytes:
    """A request's lines, each ending in a newline. The inputs sit under `inputs`, so a feature
    named `timestamp` or `request_id` cannot replace the log's own fields."""
    if len(predictions) != len(rows) or (probabilities is not None and len(probabilities) != len(rows)):
        raise ValueError("rows, predictions and probabilities differ in length")
    stamp = datetime.now(UTC).isoformat()
    latency = round(latency_ms, 3)
    lines = []
    for index, (row, prediction) in enumerate(zip(rows, predictions, strict=True)):
        entry = {
            "request_id": request_id,
            "record": index,
            "timestamp": stamp,
            "model_version": version,
            "latency_ms": latency,
            "inputs": row,
            "prediction": prediction,
        }
        if probabilities is not None:
            entry["probabilities"] = probabilities[index]
        lines.append(to_json(entry))
    lines.append(b"")
    return b"\n".join(lines)


def private_dir(path: Path) -> Path:
    """`path` (and missing parents) created, and `path` itself set to 0700 whatever the umask."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_APPEND | os.O_CREAT) -> int:
    """An fd on `path`, which is 0600 afterwards even if it existed with wider rights."""
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_whole(fd: int, data: bytes) -> None:
    """All of `data` appended, or none of it.

    Normally one os.write. A short write (a nearly full disk, a signal) is retried from where it
    stopped; if the rest cannot be written, the file is cut back to where this call began, so a
    reader never meets a torn line. ftruncate needs no free space, and the offset is ours because
    each worker is its file's only writer. Raises OSError when nothing could be kept.
    """
    written = os.write(fd, data)
    if written == len(data):
        return
    # O_APPEND leaves the offset at the end of what this call wrote.
    start = os.lseek(fd, 0, os.SEEK_CUR) - written
    try:
        view = memoryview(data)[written:]
        while view:
            step = os.write(fd, view)
            if step <= 0:
                raise OSError(errno.ENOSPC, "the write made no progress")
            view = view[step:]
    except OSError as failure:
        try:
            os.ftruncate(fd, start)
        except OSError as exc:
            raise TornLine(exc.errno, "a short write could not be cut back") from failure
        raise


def rotated_files(folder: Path) -> list[tuple[str, str, Path]]:
    """(stamp, worker, path) of every rotated file in the folder, compressed or not."""
    found = []
    for path in folder.iterdir():
        match = ROTATED.fullmatch(path.name)
        if match:
            found.append((match["stamp"], match["worker"], path))
    return found


def prune(folder: Path, keep: int) -> list[Path]:
    """Deletes the oldest rotated files beyond `keep` (all workers together); returns them.

    Two workers may prune at once: each deletes the oldest of what it sees beyond `keep`, and a
    file the other already deleted is skipped, so together they never go below `keep`.
    """
    rotations: dict[tuple[str, str], list[Path]] = {}  # a file and its .gz count once
    for stamp, worker, path in rotated_files(folder):
        rotations.setdefault((stamp, worker), []).append(path)
    doomed = [path for key in sorted(rotations)[: max(len(rotations) - keep, 0)] for path in rotations[key]]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def compress(path: Path) -> Path:
    """`path` gzipped to `path.gz` (0600) through a temporary file; the original is then removed."""
    target = path.with_name(path.name + ".gz")
    partial = path.with_name(path.name + ".gz.tmp")
    try:
        with (
            open(path, "rb") as source,
            os.fdopen(open_private(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as raw,
            gzip.GzipFile(
                filename=path.name, mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0
            ) as packed,
        ):
            shutil.copyfileobj(source, packed, 1 << 20)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    path.unlink(missing_ok=True)  # another worker's prune may have taken it meanwhile
    return target


class Outcomes:
    """Requests counted by outcome (ok, unauthorized, overloaded, log_unavailable, …), never their
    inputs: one line per aligned window that had requests, so monitoring can compute error rates.

    A window's line is written when the first request of a later window arrives, at close, and at
    exit: one small write a window, none on the hot path otherwise.
    """

    def __init__(self, path: Path, worker: str, interval_s: float) -> None:
        self.path = path
        self.worker = worker
        self.interval_s = interval_s
        self._window: int | None = None
        self._counts: dict[str, int] = {}
        self._unwritten: deque[bytes] = deque(maxlen=10_000)  # kept while the disk refuses them

    def count(self, kind: str) -> None:
        window = int(time.time() // self.interval_s)
        if window != self._window:
            self.flush()
            self._window = window
        # Kinds come from our code; the guard only keeps a typo from making unbounded keys.
        if not (len(kind) <= 40 and kind.isidentifier()):
            kind = "other"
        self._counts[kind] = self._counts.get(kind, 0) + 1

    def flush(self) -> None:
        if self._counts and self._window is not None:
            start = datetime.fromtimestamp(self._window * self.interval_s, UTC).isoformat()
            line = {
                "worker": self.worker,
                "window_start": start,
                "window_s": self.interval_s,
                "counts": self._counts,
            }
            self._unwritten.append(to_json(line) + b"\n")
            self._counts = {}
        if not self._unwritten:
            return
        try:
            private_dir(self.path.parent)
            fd = open_private(self.path)  # opened per window: a renamed file is simply left behind
            try:
                write_whole(fd, b"".join(self._unwritten))
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning(
                "outcome counts not written yet (%s): kept for the next window",
                errno.errorcode.get(exc.errno, exc),
            )
            return
        self._unwritten.clear()


class PredictionLog:
    """Append-only JSON lines, one per answered record, written before the answer is sent.

    A call writes a request's lines whole or not at all, and raises LogUnavailable when it could
    not (full disk, I/O error): the caller answers 503, and `healthy` is False until a later write
    succeeds. One os.write per request, to a file opened with O_APPEND that only this worker
    writes, so no lock is needed. Called from one thread, the worker's event loop; a background
    thread compresses, prunes and fsyncs.

    A request whose lines were written counts as `ok` in the outcome counts; the caller reports
    every other outcome (`unauthorized`, `overloaded`, `log_unavailable`, …) with `outcome(kind)`.
    """

    def __init__(
        self, directory: str | Path, worker: int | str = 0, policy: Mapping[str, Any] | None = None
    ) -> None:
        self.policy = Policy.from_mapping(policy)
        self.worker = str(worker)
        if not WORKER_NAME.fullmatch(self.worker):
            raise ValueError("the worker name must be 1-64 letters, digits, '_' or '-'")
        root = Path(directory)
        self.folder = root / "predictions"
        self.path = self.folder / f"predictions.{self.worker}.jsonl"
        self.outcomes = Outcomes(
            root / "outcomes" / f"outcomes.{self.worker}.jsonl", self.worker, self.policy.outcome_interval_s
        )
        self._lock = threading.Lock()  # held while the fd is swapped or fsynced, never for a write
        self._fd = -1
        self._size = 0
        self._identity: tuple[int, int] = (0, 0)
        self._healthy = True
        self._torn = False
        self._next_check = 0.0
        self._next_probe = 0.0
        self._probe_bytes = 4096
        self._closed = False
        try:
            if not root.exists():  # a folder we make is private; one given to us keeps its rights
                private_dir(root)
            private_dir(root / "outcomes")
            self._reopen()
        except OSError as exc:
            raise LogUnavailable(f"cannot open the prediction log in {self.folder}: {exc.strerror}") from exc
        self._jobs: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=_background,
            args=(weakref.ref(self), self._jobs),
            daemon=True,
            name=f"prediction-log-{self.worker}",
        )
        self._thread.start()
        self._resume_unfinished_rotations()
        _remember(self)

    def __call__(
        self,
        request_id: str,
        version: str,
        rows: Sequence[Mapping[str, Any]],
        predictions: Sequence[Any],
        probabilities: Sequence[Mapping[str, float]] | None,
        latency_ms: float,
    ) -> None:
        data = encode(request_id, version, rows, predictions, probabilities, latency_ms)
        try:
            self._reopen_if_moved()
            if self._torn:  # end the torn line first, so that it alone is unreadable
                write_whole(self._fd, b"\n")
                self._torn = False
            write_whole(self._fd, data)
            if self.policy.fsync == "every_write":
                self._sync_or_undo(len(data))
        except OSError as exc:
            self._torn = self._torn or isinstance(exc, TornLine)
            self._healthy = False
            self._next_probe = time.monotonic() + PROBE_EVERY_S
            self._probe_bytes = max(len(data), 4096)
            reason = errno.errorcode.get(exc.errno or 0, "an OS error")
            raise LogUnavailable(f"the prediction log refused {len(data)} bytes: {reason}") from exc
        self._healthy = True
        self._size += len(data)
        self.outcomes.count("ok")
        if self._size >= self.policy.max_bytes:
            self._rotate()

    def outcome(self, kind: str) -> None:
        """Counts one request that was not logged as answered: `unauthorized`, `overloaded`, …"""
        self.outcomes.count(kind)

    @property
    def healthy(self) -> bool:
        """False after a failed write until a later write succeeds: a request's, or a probe's
        (one per PROBE_EVERY_S, when asked), so an instance taken out of rotation can recover.
        Also False while the log's disk has less than `min_free_bytes` free: every worker of a
        service then turns unready together, before its writes fail, not only the one whose
        write failed first."""
        if not self._healthy and not self._closed and time.monotonic() >= self._next_probe:
            self._next_probe = time.monotonic() + PROBE_EVERY_S
            self._healthy = self._probe()
        return self._healthy and self._room()

    def _room(self) -> bool:
        try:
            disk = os.statvfs(self.folder)
        except OSError:
            return False
        return disk.f_bavail * disk.f_frsize >= self.policy.min_free_bytes

    def close(self) -> None:
        """Writes the pending outcome counts, syncs (unless fsync is `none`) and closes the file."""
        if self._closed:
            return
        self._closed = True
        self.outcomes.flush()
        self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            # Let a compression in progress finish; one cut short is redone at the next start.
            self._thread.join(CLOSE_WAIT_S)
        with self._lock:
            try:
                if self.policy.fsync != "none":
                    os.fdatasync(self._fd)
            except OSError as exc:
                log.error("prediction log not synced at close: %s", exc.strerror)
            os.close(self._fd)
            self._fd = -1

    # --- the file -----------------------------------------------------------------------------

    def _reopen(self) -> None:
        """Opens the file at `path` (creating it and its folder) and closes the previous one."""
        private_dir(self.folder)
        fd = open_private(self.path)
        status = os.fstat(fd)
        with self._lock:
            old, self._fd = self._fd, fd
        if old >= 0:
            os.close(old)
        self._identity = (status.st_dev, status.st_ino)
        self._size = status.st_size

    def _reopen_if_moved(self) -> None:
        """Reopens when the file at `path` is no longer ours (renamed or removed, as logrotate
        does). One stat every `reopen_check_s`, or at every call while the log is unhealthy."""
        now = time.monotonic()
        if now < self._next_check and self._healthy:
            return
        self._next_check = now + self.policy.reopen_check_s
        try:
            status = os.stat(self.path)
            moved = (status.st_dev, status.st_ino) != self._identity
        except FileNotFoundError:
            moved = True
        if moved:
            self._reopen()

    def _sync_or_undo(self, written: int) -> None:
        """fsync after a write; if it fails, the request's lines are cut back out of the file."""
        try:
            os.fdatasync(self._fd)
        except OSError:
            os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_CUR) - written)
            raise

    def _probe(self) -> bool:
        """Whether a write as large as the one that failed fits now, tried on a scratch file."""
        probe = self.folder / f".probe.{self.worker}"
        try:
            self._reopen_if_moved()
            fd = open_private(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                write_whole(fd, b"\n" * self._probe_bytes)
            finally:
                os.close(fd)
                probe.unlink(missing_ok=True)
        except OSError:
            return False
        return True

    # --- retention ----------------------------------------------------------------------------

    def _rotate(self) -> None:
        """Renames the full file to a timestamped name and starts a fresh one; the background
        thread compresses it and prunes. A failure here loses nothing: the file just grows on."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.folder / f"predictions.{self.worker}.{stamp}.jsonl"
        try:
            os.rename(self.path, target)
            self._reopen()
        except OSError as exc:
            log.warning("prediction log not rotated (%s): retrying at the next request", exc.strerror)
            return
        self._jobs.put(target)

    def _resume_unfinished_rotations(self) -> None:
        """This worker's rotated files that a stop left uncompressed, and its partial .gz files."""
        for path in self.folder.glob(f"predictions.{self.worker}.*.jsonl*"):
            if path.name.endswith(".gz.tmp"):
                path.unlink(missing_ok=True)
            elif ROTATED.fullmatch(path.name) and path.suffix == ".jsonl":
                self._jobs.put(path)

    def _maintain(self, job: Path | None) -> None:
        """One turn of the background thread: a rotated file to compress, and pruning; or a sync."""
        if job is not None:
            if self.policy.compress:
                try:
                    compress(job)
                except OSError as exc:
                    log.warning("rotated prediction log left uncompressed: %s", exc.strerror)
            prune(self.folder, self.policy.keep)
        if self.policy.fsync == "interval":
            self._sync()

    def _sync(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                # The kernel may have dropped the dirty pages: treat it like a failed write.
                self._healthy = False
                log.error("prediction log fsync failed: %s", exc.strerror)


def _background(ref: weakref.ref[PredictionLog], jobs: queue.SimpleQueue[Path | None]) -> None:
    """Runs until the log is closed or collected: compresses and prunes rotated files as they
    come, and with `fsync: interval` syncs the file every `fsync_interval_s`, off the request path."""
    while True:
        current = ref()
        if current is None:
            return
        wait = current.policy.fsync_interval_s if current.policy.fsync == "interval" else 5.0
        del current  # hold no reference while waiting, so an unused log can be collected
        try:
            job = jobs.get(timeout=wait)
        except queue.Empty:  # a tick: time to sync
            job, stop = None, False
        else:
            stop = job is None  # close() asks the thread to stop; the jobs before it are done
        current = ref()
        if current is None or stop:
            return
        try:
            current._maintain(job)
        except Exception:  # the thread must outlive any one failure
            log.exception("prediction log maintenance failed")
        del current


_open_logs: weakref.WeakSet[PredictionLog] = weakref.WeakSet()
_exit_hook = False


def _remember(prediction_log: PredictionLog) -> None:
    """Registers the log to be closed at exit, so the last outcome window is written."""
    global _exit_hook
    _open_logs.add(prediction_log)
    if not _exit_hook:
        atexit.register(_close_all)
        _exit_hook = True


def _close_all() -> None:
    for prediction_log in list(_open_logs):
        prediction_log.close()
