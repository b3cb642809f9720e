"""The prediction log's files: private folders and files, whole writes, rotated files (found, pruned,
compressed), and the background thread that does that upkeep off the request path.

prediction_log.py describes the layout and holds the policy; this module only acts on paths and fds.
"""

from __future__ import annotations

import atexit
import errno
import gzip
import logging
import os
import queue
import re
import shutil
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.serving.prediction_log import PredictionLog

log = logging.getLogger("tabular_mlops.prediction_log")  # one logger for the whole prediction log

FILE_MODE = 0o600  # the lines hold raw inputs: owner only, whatever the umask
DIR_MODE = 0o700
GZIP_LEVEL = 1  # measured on these lines: 8.6x smaller at 81 MB/s (level 6: 12.9x at 33 MB/s)
ROTATED = re.compile(
    r"predictions\.(?P<worker>[A-Za-z0-9_-]{1,64})\.(?P<stamp>\d{8}T\d{12}Z)\.jsonl(?:\.gz)?"
)


class TornLine(OSError):
    """A short write could neither be finished nor cut back: the file ends inside a line."""


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


def run_background(ref: weakref.ref[PredictionLog], jobs: queue.SimpleQueue[Path | None]) -> None:
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


def close_at_exit(prediction_log: PredictionLog) -> None:
    """Registers the log to be closed at exit, so the last outcome window is written."""
    global _exit_hook
    _open_logs.add(prediction_log)
    if not _exit_hook:
        atexit.register(_close_all)
        _exit_hook = True


def _close_all() -> None:
    for prediction_log in list(_open_logs):
        prediction_log.close()
