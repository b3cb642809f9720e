"""Natural micro-batching with load shedding, in front of the model."""

from __future__ import annotations

import asyncio
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
        self._queue: asyncio.Queue | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def submit(self, rows: list[dict]) -> tuple[list, list | None]:
        if self.pending_rows + len(rows) > self.max_queue_rows:
            raise Overloaded
        if self._queue is None:
            self._queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        self.pending_rows += len(rows)
        await self._queue.put((rows, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            if self.inline:
                # Let the requests that are ready submit first: under load they join this batch
                # (and count against max_queue_rows); alone, a request waits one loop turn.
                await asyncio.sleep(0)
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            rows = [row for items, _ in batch for row in items]
            try:
                if self.inline:
                    outcome = self.fn(rows)
                else:
                    outcome = await loop.run_in_executor(self._pool, self.fn, rows)
            except Exception as exc:
                outcome = exc
            finally:
                self.pending_rows -= len(rows)
            start = 0
            for items, future in batch:
                end = start + len(items)
                if future.done():  # its caller went away (disconnect, timeout)
                    pass
                elif isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    predictions, probabilities = outcome
                    future.set_result(
                        (predictions[start:end], probabilities[start:end] if probabilities else None)
                    )
                start = end
