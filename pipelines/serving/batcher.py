"""Natural micro-batching with load shedding, in front of the model."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class Overloaded(Exception):
    """More rows are waiting for the model than the service accepts."""


class Batcher:
    """Natural micro-batching: requests that arrive while the model is busy share its next call.

    No fixed wait: a lone request runs at once; under load, batches grow by themselves. Past
    `max_queue_rows` waiting rows, new requests are refused at once (load shedding). A fast model
    (`inline`, the compiled graph: ~0.05 ms a row) runs on the event loop, since a hop to a thread
    costs more than the call; a slow one runs in a thread so the loop keeps accepting requests.
    """

    def __init__(
        self, fn: Callable[[list[dict]], tuple[list, list | None]], max_queue_rows: int, inline: bool = False
    ) -> None:
        self.fn = fn
        self.max_queue_rows = max_queue_rows
        self.inline = inline
        self.pending_rows = 0
        self._queue: asyncio.Queue = asyncio.Queue()  # replaced, with its task, on first use
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def submit(self, rows: list[dict]) -> tuple[list, list | None]:
        if self.pending_rows + len(rows) > self.max_queue_rows:
            raise Overloaded
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            # First use, or the loop task died or belongs to a closed loop (a new asyncio.run):
            # a queue nobody reads would leave every later caller waiting forever.
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run(self._queue))
        future = loop.create_future()
        self.pending_rows += len(rows)
        self._queue.put_nowait((rows, future))  # unbounded: never waits, so never cancelled here
        return await future

    def close(self) -> None:
        """Stops the batching task and its thread, from any thread. For a batcher swapped out of
        service once nothing waits on it (pipelines/serving/follower.py)."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(RuntimeError):  # its loop is closed: the task is gone with it
                task.get_loop().call_soon_threadsafe(task.cancel)
        self._pool.shutdown(wait=False)

    async def _run(self, queue: asyncio.Queue) -> None:
        """Serves batches until cancelled. Whatever goes wrong with one batch is handed to its
        callers as an exception and the loop goes on: one bad batch must not stop the service."""
        batch: list[tuple[list[dict], asyncio.Future]] = []
        try:
            while True:
                batch = [await queue.get()]
                try:
                    if self.inline:
                        # Let the requests that are ready submit first: under load they join this
                        # batch (and count against max_queue_rows); alone, a request waits one turn.
                        await asyncio.sleep(0)
                    while not queue.empty():
                        batch.append(queue.get_nowait())
                    await self._serve(batch)
                except Exception as exc:  # anything _serve did not hand out itself
                    _fail(batch, exc)
                finally:
                    # Every row taken from the queue leaves the count here, once, whatever happened.
                    self.pending_rows -= _rows_in(batch)
                batch = []
        except BaseException:
            # Cancelled (shutdown, or its event loop closing): answer what this task will never serve.
            leftover = []
            while not queue.empty():
                leftover.append(queue.get_nowait())
            self.pending_rows -= _rows_in(leftover)
            _fail(batch + leftover, RuntimeError("the batcher stopped before answering"))
            raise

    async def _serve(self, batch: list[tuple[list[dict], asyncio.Future]]) -> None:
        rows = [row for items, _ in batch for row in items]
        try:
            if self.inline:
                outcome = self.fn(rows)
            else:
                outcome = await asyncio.get_running_loop().run_in_executor(self._pool, self.fn, rows)
            answers = split(outcome, [len(items) for items, _ in batch])
        except Exception as exc:
            answers = [exc] * len(batch)
        for (_, future), answer in zip(batch, answers, strict=True):
            if isinstance(answer, Exception):
                _settle(future, exception=answer)
            else:
                _settle(future, result=answer)


def split(outcome: object, sizes: list[int]) -> list[tuple[list, list | None]]:
    """Each caller's slice of the model's answer; a ValueError when the answer does not fit."""
    if not (isinstance(outcome, tuple) and len(outcome) == 2):
        raise ValueError("the model did not return (predictions, probabilities)")
    predictions, probabilities = outcome
    total = sum(sizes)
    if len(predictions) != total or (probabilities is not None and len(probabilities) != total):
        raise ValueError(f"the model answered {len(predictions)} predictions for {total} rows")
    slices, start = [], 0
    for size in sizes:
        end = start + size
        slices.append(
            (predictions[start:end], probabilities[start:end] if probabilities is not None else None)
        )
        start = end
    return slices


def _rows_in(batch: list[tuple[list[dict], asyncio.Future]]) -> int:
    return sum(len(items) for items, _ in batch)


def _fail(batch: list[tuple[list[dict], asyncio.Future]], exception: BaseException) -> None:
    for _, future in batch:
        _settle(future, exception=exception)


def _settle(future: asyncio.Future, result: object = None, exception: BaseException | None = None) -> None:
    """Answers a caller unless it went away (disconnect, timeout): a done future is left alone."""
    if future.done():
        return
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except asyncio.InvalidStateError:  # settled meanwhile (cancelled): the others still get theirs
        pass
