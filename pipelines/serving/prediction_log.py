"""The prediction log: every answered record as a JSON line, and refused requests as counts.

Layout under the log folder (`$PREDICTION_LOG_DIR`), folders 0700 and files 0600:

    predictions/predictions.<worker>.jsonl                    the active file, one per worker
    predictions/predictions.<worker>.<UTC stamp>.jsonl[.gz]   rotated by size, then compressed
    outcomes/outcomes.<worker>.jsonl                          request counts by outcome, per window

The policy (rotation, retention, fsync, windows) is `serving.prediction_log` in params.yaml,
packaged into meta.json's `service`; docs/serving.md ("Prediction log") explains each choice.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import queue
import re
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.serving.log_files import (
    ROTATED,
    TornLine,
    close_at_exit,
    compress,
    open_private,
    private_dir,
    prune,
    run_background,
    write_whole,
)
from pipelines.serving.log_lines import Outcomes, encode

log = logging.getLogger("tabular_mlops.prediction_log")

FSYNC_MODES = ("none", "interval", "every_write")
CLOSE_WAIT_S = 10.0  # close() waits this long for a rotated file's compression to finish
PROBE_EVERY_S = 1.0  # an unhealthy log tries a probe write at most this often, when asked
WORKER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class LogUnavailable(Exception):
    """The log could not take a request's lines whole: the request must not be answered as ok."""


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
            target=run_background,
            args=(weakref.ref(self), self._jobs),
            daemon=True,
            name=f"prediction-log-{self.worker}",
        )
        self._thread.start()
        self._resume_unfinished_rotations()
        close_at_exit(self)

    def __call__(
        self,
        request_id: str,
        version: str,
        rows: Sequence[Mapping[str, Any]],
        predictions: Sequence[Any],
        probabilities: Sequence[Mapping[str, float]] | None,
        latency_ms: float,
        role: str = "champion",
    ) -> None:
        """Writes the lines; `role` is the answering arm, or `shadow` (not a request: counted for
        its role only)."""
        data = encode(request_id, version, rows, predictions, probabilities, latency_ms, role)
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
        self.outcomes.count("ok", role, request=role != "shadow", version=version)
        if self._size >= self.policy.max_bytes:
            self._rotate()

    def outcome(self, kind: str, role: str | None = None, version: str | None = None) -> None:
        """Counts one request that was not logged as answered: `unauthorized`, `overloaded`, …;
        with `role`, also for that arm (`shadow`: for the shadow only, it is not a request);
        `version` is the model version it was refused under."""
        self.outcomes.count(kind, role, request=role != "shadow", version=version)

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
