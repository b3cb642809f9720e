"""What the prediction log's lines hold: a request's records (`encode`), and the requests counted by
outcome (`Outcomes`), which never hold inputs."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from pipelines.serving.log_files import open_private, private_dir, write_whole

log = logging.getLogger("tabular_mlops.prediction_log")  # one logger for the whole prediction log
ROLES = ("champion", "challenger", "shadow")  # who scored a line: the answering arm, or the shadow


def encode(
    request_id: str,
    version: str,
    rows: Sequence[Mapping[str, Any]],
    predictions: Sequence[Any],
    probabilities: Sequence[Mapping[str, float]] | None,
    latency_ms: float,
    role: str = "champion",
) -> bytes:
    """A request's lines, each ending in a newline. The inputs sit under `inputs`, so a feature
    named `timestamp` or `request_id` cannot replace the log's own fields. `role` is the arm that
    answered (`champion` or `challenger`), or `shadow` for the other arm's answer, scored off the
    request path and never returned (docs/rollout.md)."""
    if len(predictions) != len(rows) or (probabilities is not None and len(probabilities) != len(rows)):
        raise ValueError("rows, predictions and probabilities differ in length")
    # A shadow line carries no inputs: they are the answered line's, and writing them twice was
    # most of shadow scoring's cost on the event loop.
    shadow = role == "shadow"
    stamp = datetime.now(UTC).isoformat()
    # Unrounded: /metrics observes the exact value, and a latency rounded to 1 µs landed in the
    # neighbouring histogram bucket for about 1 request in 140 sitting near the 1 ms bound.
    latency = float(latency_ms)
    lines = []
    for index, (row, prediction) in enumerate(zip(rows, predictions, strict=True)):
        entry = {
            "request_id": request_id,
            "record": index,
            "timestamp": stamp,
            "model_version": version,
            "role": role,
            "latency_ms": latency,
            "inputs": row,
            "prediction": prediction,
        }
        if shadow:  # the answered line beside it (same request_id and record) holds the inputs
            del entry["inputs"]
        if probabilities is not None:
            entry["probabilities"] = probabilities[index]
        lines.append(to_json(entry))
    lines.append(b"")
    return b"\n".join(lines)


class Outcomes:
    """Requests counted by outcome (ok, unauthorized, overloaded, log_unavailable, …), never their
    inputs: one line per aligned window that had requests, so monitoring can compute error rates.
    Outcomes after routing are also counted per role under `by_role` (`champion`, `challenger`,
    and `shadow` for the off-path scoring, which is not a request and so not in `counts`), so the
    rollout analysis can compare the arms' error rates. A request's count carries the model
    version that answered it (or, refused before routing, the champion the worker served then):
    one line per version a window saw, so monitoring never has to guess the version from when a
    worker logged answers (a worker that only refused requests in a window logged none).

    A window's line is written when the first request of a later window arrives, at close, and at
    exit: one small write a window, none on the hot path otherwise.
    """

    def __init__(self, path: Path, worker: str, interval_s: float) -> None:
        self.path = path
        self.worker = worker
        self.interval_s = interval_s
        self._window: int | None = None
        self._counts: dict[str | None, dict[str, int]] = {}  # by version
        self._by_role: dict[str, dict[str, int]] = {}
        self._unwritten: deque[bytes] = deque(maxlen=10_000)  # kept while the disk refuses them

    def count(
        self, kind: str, role: str | None = None, request: bool = True, version: str | None = None
    ) -> None:
        """One outcome; `role` also counts it for that arm; `request=False` (shadow scoring) counts
        it for the role only; `version` is the model version the request was answered or refused
        under."""
        window = int(time.time() // self.interval_s)
        if window != self._window:
            self.flush()
            self._window = window
        # Kinds come from our code; the guard only keeps a typo from making unbounded keys.
        if not (len(kind) <= 40 and kind.isidentifier()):
            kind = "other"
        if request:
            counts = self._counts.setdefault(version, {})
            counts[kind] = counts.get(kind, 0) + 1
        if role is not None:
            counts = self._by_role.setdefault(role if role in ROLES else "other", {})
            counts[kind] = counts.get(kind, 0) + 1

    def flush(self) -> None:
        if (self._counts or self._by_role) and self._window is not None:
            start = datetime.fromtimestamp(self._window * self.interval_s, UTC).isoformat()
            base = {"worker": self.worker, "window_start": start, "window_s": self.interval_s}
            # One line per version; the roles' counts (not per version) ride on the first.
            lines: list[dict[str, Any]] = [
                {**base, **({"version": v} if v is not None else {}), "counts": c}
                for v, c in self._counts.items()
            ] or [{**base, "counts": {}}]
            if self._by_role:
                lines[0]["by_role"] = self._by_role
            self._unwritten.extend(to_json(line) + b"\n" for line in lines)
            self._counts, self._by_role = {}, {}
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
