"""Ground-truth labels in: one validation rule for `POST /feedback` and `make feedback`, and the
durable writer both use.

A label names the answer it corrects by the answer's `request_id` and the record's index in that
request (`record`). Labels go beside the prediction log, one file per writer, folder 0700 and
files 0600:

    feedback/labels.<writer>.jsonl    {"request_id", "record", "label", "received_at", "source"}

Lines are appended whole (one write per call), and fsynced before the call returns: the API
answers `accepted` only for labels that are on disk. A resubmission appends again; the monitor's
join keeps one label per (request_id, record), and reports conflicting ones.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic_core import to_json

from pipelines.serving.log_files import open_private, private_dir, write_whole

LOG_DIR_ENV = "PREDICTION_LOG_DIR"  # the folder of the prediction log, which the labels sit beside
DEFAULT_LOG_DIR = "monitoring"  # the service's default, when the variable is unset
FOLDER = "feedback"
# The ids the service hands out (BentoML's trace ids, or uuid4 hex), with room for a proxy's own.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SOURCES = ("api", "bulk")
WRITER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
SHOWN_CLASSES = 10  # classes named in a refusal's message, at most


class FeedbackUnavailable(Exception):
    """The labels could not be written whole and synced: none of them count as accepted."""


class InvalidLabel(ValueError):
    """One label breaks a rule: `field` names where (`labels.3.label`), the message says why."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Target:
    """What a label must be for the served model: its task, its classes, and how many records a
    request may hold (so a record index past that cannot name any answer)."""

    task: str
    classes: tuple[Any, ...]
    max_records: int

    @classmethod
    def of(cls, task: str, classes: Sequence[Any], max_records: int) -> Target:
        if task not in ("classification", "regression"):
            raise ValueError(f"unknown task {task!r}")
        if task == "classification" and not classes:
            raise ValueError("a classifier without classes cannot take labels")
        return cls(task, tuple(classes), max_records)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    """A JSON number that is a finite float: an integer of 400 digits is not (it overflows)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _is_class(value: Any, classes: Sequence[Any]) -> bool:
    """Type-strict: the string "1" is not the class 1, nor True the class 1, nor 1.0 the class 1."""
    return any(type(value) is type(c) and value == c for c in classes)


def _describe(classes: Sequence[Any]) -> str:
    shown = ", ".join(to_json(c).decode() for c in classes[:SHOWN_CLASSES])
    more = f", … ({len(classes)} in all)" if len(classes) > SHOWN_CLASSES else ""
    return shown + more


def label_problem(target: Target, request_id: Any, record: Any, label: Any) -> tuple[str, str] | None:
    """The first rule one label breaks, as (key, problem), or None. Problems never quote values:
    they may be the caller's data. The classes are the model's, not the caller's, so they are named."""
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        return "request_id", "must be the answer's request_id: 1-128 letters, digits, '.', '_', ':' or '-'"
    if not _is_int(record) or not 0 <= record < target.max_records:
        return (
            "record",
            f"must be the record's index in its request: an integer from 0 to {target.max_records - 1}",
        )
    if target.task == "classification":
        if not _is_class(label, target.classes):
            return (
                "label",
                f"must be one of the model's classes, typed as they are: {_describe(target.classes)}",
            )
    elif not _is_finite_number(label):
        return "label", "must be a finite number"
    return None


def check_labels(target: Target, labels: Sequence[Mapping[str, Any]]) -> None:
    """Every label valid, else InvalidLabel for the first problem (`labels.<i>.<key>`)."""
    for index, item in enumerate(labels):
        found = label_problem(target, item.get("request_id"), item.get("record"), item.get("label"))
        if found is not None:
            raise InvalidLabel(f"labels.{index}.{found[0]}", found[1])


def encode(labels: Sequence[Mapping[str, Any]], source: str, received_at: datetime | None = None) -> bytes:
    """The labels' lines, each ending in a newline, with when they arrived and how."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    stamp = (received_at or datetime.now(UTC)).isoformat()
    return b"".join(
        to_json(
            {
                "request_id": item["request_id"],
                "record": item["record"],
                "label": item["label"],
                "received_at": stamp,
                "source": source,
            }
        )
        + b"\n"
        for item in labels
    )


class FeedbackLog:
    """Appends label lines to `<directory>/feedback/labels.<writer>.jsonl`, whole and synced.

    The file is opened per call (a label arrives far less often than a prediction), so a file
    renamed or removed meanwhile is simply started afresh. A lock makes the calls of one process
    take turns, since `write_whole` cuts a failed write back from the end of the file.
    """

    def __init__(self, directory: str | Path, writer: str) -> None:
        if not WRITER_NAME.fullmatch(writer):
            raise ValueError("the writer name must be 1-64 letters, digits, '_' or '-'")
        self.folder = Path(directory) / FOLDER
        self.path = self.folder / f"labels.{writer}.jsonl"
        self._lock = threading.Lock()

    def append(self, data: bytes) -> None:
        """`data` (whole lines) appended and fsynced, or FeedbackUnavailable and nothing kept."""
        with self._lock:
            try:
                private_dir(self.folder)
                fd = open_private(self.path)
                try:
                    start = os.fstat(fd).st_size
                    write_whole(fd, data)
                    try:
                        os.fsync(fd)
                    except OSError:
                        os.ftruncate(fd, start)  # not known to be on disk: not accepted, so not kept
                        raise
                finally:
                    os.close(fd)
            except OSError as exc:
                reason = errno.errorcode.get(exc.errno or 0, "an OS error")
                raise FeedbackUnavailable(f"labels not written to {self.path}: {reason}") from exc


async def accept(target: Target, log: FeedbackLog, labels: Sequence[Mapping[str, Any]]) -> int:
    """`POST /feedback`'s work: the labels checked, then appended and synced off the event loop
    (an fsync may take milliseconds that other requests would wait for). Returns how many."""
    check_labels(target, labels)
    await asyncio.to_thread(log.append, encode(labels, "api"))
    return len(labels)


def service_writer() -> str:
    """This worker's writer name, `api-<worker index>`: each worker appends to its own file."""
    try:
        import bentoml

        index = bentoml.server_context.worker_index or 0
    except ImportError:  # outside BentoML (unit tests)
        index = 0
    return f"api-{index}"


def log_dir(environ: Mapping[str, str]) -> Path:
    """Where the labels go: beside the prediction log, as the service finds it."""
    return Path(environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR)


def request_model(max_records: int) -> type[BaseModel]:
    """The body's shape only: `{"labels": [{"request_id", "record", "label"}, …]}`, 1..max_records
    items, no other keys. The values are judged by `check_labels`, the rule `make feedback` uses too."""
    item = create_model(
        "Label",
        __config__=ConfigDict(extra="forbid"),
        request_id=(Any, Field(..., description="the request_id of the answer")),
        record=(Any, Field(..., description="the record's index in that request, from 0")),
        label=(Any, Field(..., description="the true value: one of the classes, or a finite number")),
    )
    return create_model(
        "FeedbackRequest",
        __config__=ConfigDict(extra="forbid"),
        labels=(list[item], Field(..., min_length=1, max_length=max_records)),
    )
