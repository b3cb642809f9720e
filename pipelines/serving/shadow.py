"""Shadow scoring: the arm that did not answer scores the same records after the answer is sent.

Its answers are logged with role `shadow`, never returned, so the rollout analysis can compare the
arms on the same traffic (agreement, score differences) without the caller seeing a difference.
The work is queued and scored a few milliseconds later in one call for all the requests that
arrived meanwhile: one model call and no thread hop per request keeps the champion's latency
where it was. The queue is bounded: past `max_rows` waiting rows, shadow work is dropped and
counted (`dropped`), never allowed to slow or refuse a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from pipelines.serving import answers
from pipelines.serving.batcher import split
from pipelines.serving.follower import Arm
from pipelines.serving.prediction_log import LogUnavailable

log = logging.getLogger("tabular_mlops.shadow")
ROLE = "shadow"
DELAY_S = 0.005  # how long shadow work gathers before one model call scores it all

Write = Callable[[str, str, list[dict], list[Any], list[dict] | None, float, str], None]


class Shadow:
    """Queued shadow work for one worker (its event loop); see the module's docstring."""

    def __init__(
        self, write: Write | None, count: Callable[[str], None], max_rows: int, delay_s: float = DELAY_S
    ):
        self.write, self.count = write, count
        self.max_rows, self.delay_s = max_rows, delay_s
        self.pending_rows = 0
        self._items: list[tuple[Arm, str, list[dict]]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    def submit(self, arm: Arm, request_id: str, rows: list[dict]) -> None:
        """Queues the records for `arm`, from the event loop, after the answer is ready."""
        if self.write is None:
            return
        if self.pending_rows + len(rows) > self.max_rows:
            self.count("dropped")
            return
        self._items.append((arm, request_id, rows))
        self.pending_rows += len(rows)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.delay_s, self._start)

    def _start(self) -> None:
        self._handle = None
        items, self._items = self._items, []
        task = asyncio.get_running_loop().create_task(self._score(items))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Scores what is queued now, and waits for work already under way (tests, shutdown)."""
        if self._handle is not None:
            self._handle.cancel()
            self._start()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _score(self, items: list[tuple[Arm, str, list[dict]]]) -> None:
        groups: dict[int, tuple[Arm, list[tuple[str, list[dict]]]]] = {}
        for arm, request_id, rows in items:
            groups.setdefault(id(arm), (arm, []))[1].append((request_id, rows))
        for arm, group in groups.values():
            rows = [row for _, part in group for row in part]
            try:
                await self._score_group(arm, group, rows)
            finally:
                self.pending_rows -= len(rows)

    async def _score_group(self, arm: Arm, group: list[tuple[str, list[dict]]], rows: list[dict]) -> None:
        started = time.perf_counter()
        try:
            if arm.batcher.inline:  # the compiled graph: faster on the loop than a thread hop
                outcome = answers.answer(arm.loaded, rows)
            else:
                outcome = await asyncio.to_thread(answers.answer, arm.loaded, rows)
            parts = split(outcome, [len(part) for _, part in group])
        except Exception:
            log.exception("shadow scoring failed (v%s)", arm.version)
            for _ in group:
                self.count("error")
            return
        latency_ms = (time.perf_counter() - started) * 1000
        for (request_id, part), (predictions, probabilities) in zip(group, parts, strict=True):
            try:
                self.write(request_id, arm.version, part, predictions, probabilities, latency_ms, ROLE)  # type: ignore[misc]
            except LogUnavailable:
                self.count("log_unavailable")
