"""pipelines/serving/batcher.py: natural micro-batching and load shedding, in both modes.

The model is a fake that records each call's rows and answers row {"x": n} with prediction 10 * n
and probabilities {"p": n}, so every caller's expected answer is computed by hand from its own rows.
"""

import asyncio
import threading
import time

import pytest

from pipelines.serving.batcher import Batcher, Overloaded

MODES = pytest.mark.parametrize("inline", [True, False], ids=["inline", "thread"])
TIMEOUT = 2.0  # seconds: a hung batcher fails the test instead of hanging the suite


def rows(*xs: int) -> list[dict]:
    return [{"x": x} for x in xs]


def expected(*xs: int) -> tuple[list, list]:
    return [10 * x for x in xs], [{"p": x} for x in xs]


class Model:
    """The fake model: records calls; `hold` makes the first call wait until `release` is set."""

    def __init__(self, hold: bool = False, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.hold = hold
        self.fail_on = fail_on
        self.started = threading.Event()
        self.release = threading.Event()
        self.during_first_call = None  # a callable run inside the first call (inline mode)

    def __call__(self, batch: list[dict]) -> tuple[list, list]:
        xs = [row["x"] for row in batch]
        self.calls.append(xs)
        first = len(self.calls) == 1
        self.started.set()
        if first and self.during_first_call is not None:
            self.during_first_call()
        if first and self.hold:
            assert self.release.wait(TIMEOUT), "the test never released the model"
        if self.fail_on is not None and self.fail_on in xs:
            raise ValueError(f"model failed on a batch of {len(xs)}")
        return [10 * x for x in xs], [{"p": x} for x in xs]


def run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, TIMEOUT)

    return asyncio.run(bounded())


async def until(event: threading.Event) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not event.is_set():
        assert time.monotonic() < deadline, "the model was never called"
        await asyncio.sleep(0.001)


@MODES
def test_concurrent_submits_share_one_call_and_each_gets_its_own_slice(inline):
    model = Model()
    batcher = Batcher(model, max_queue_rows=100, inline=inline)
    requests = [rows(1), rows(2, 3, 4), rows(5, 6)]

    async def main():
        return await asyncio.gather(*(batcher.submit(r) for r in requests))

    answers = run(main())
    assert model.calls == [[1, 2, 3, 4, 5, 6]]
    assert answers == [expected(1), expected(2, 3, 4), expected(5, 6)]
    assert batcher.pending_rows == 0


def test_submits_arriving_while_the_threaded_model_is_busy_share_its_next_call():
    model = Model(hold=True)
    batcher = Batcher(model, max_queue_rows=100, inline=False)

    async def main():
        first = asyncio.ensure_future(batcher.submit(rows(0)))
        await until(model.started)  # the model is now busy with [0]
        later = [asyncio.ensure_future(batcher.submit(r)) for r in (rows(1, 2), rows(3), rows(4, 5, 6))]
        await asyncio.sleep(0.01)  # they are all queued, and nothing else ran the model
        assert model.calls == [[0]]
        model.release.set()
        return await asyncio.gather(first, *later)

    answers = run(main())
    assert model.calls == [[0], [1, 2, 3, 4, 5, 6]]
    assert answers == [expected(0), expected(1, 2), expected(3), expected(4, 5, 6)]
    assert batcher.pending_rows == 0


def test_submits_arriving_while_the_inline_model_is_busy_share_its_next_call():
    model = Model()
    batcher = Batcher(model, max_queue_rows=100, inline=True)
    later = []

    def arrive():  # requests that come in while the model runs on the event loop
        loop = asyncio.get_running_loop()
        later.extend(loop.create_task(batcher.submit(r)) for r in (rows(1, 2), rows(3), rows(4, 5, 6)))

    model.during_first_call = arrive

    async def main():
        first = await batcher.submit(rows(0))
        return [first, *(await asyncio.gather(*later))]

    answers = run(main())
    assert model.calls == [[0], [1, 2, 3, 4, 5, 6]]
    assert answers == [expected(0), expected(1, 2), expected(3), expected(4, 5, 6)]


def test_an_inline_batch_waits_one_loop_turn_for_requests_that_are_ready():
    # Under load, requests arrive from the server's I/O callbacks: a turn of the event loop after
    # the first one. Inline, the model would otherwise take the loop before they could submit.
    model = Model()
    batcher = Batcher(model, max_queue_rows=100, inline=True)

    async def main():
        loop = asyncio.get_running_loop()
        first = loop.create_task(batcher.submit(rows(1)))
        later = []
        loop.call_soon(lambda: later.append(loop.create_task(batcher.submit(rows(2, 3)))))
        return [await first, await later[0]]

    assert run(main()) == [expected(1), expected(2, 3)]
    assert model.calls == [[1, 2, 3]]


def test_a_lone_inline_request_runs_at_once_without_waiting_for_company():
    model = Model()
    batcher = Batcher(model, max_queue_rows=100, inline=True)
    turns = 0

    async def ticker():
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def main():
        tick = asyncio.ensure_future(ticker())
        answer = await batcher.submit(rows(7))
        tick.cancel()
        return answer

    assert run(main()) == expected(7)
    assert model.calls == [[7]]
    assert turns <= 5  # a few turns of the event loop: no timer, no wait for a fuller batch


def test_a_lone_threaded_request_runs_at_once():
    model = Model()
    batcher = Batcher(model, max_queue_rows=100, inline=False)
    started = time.perf_counter()
    assert run(batcher.submit(rows(7, 8))) == expected(7, 8)
    assert time.perf_counter() - started < 0.5  # a thread hop, not a batching window
    assert model.calls == [[7, 8]]


def test_past_max_queue_rows_a_submit_is_refused_at_once_and_the_count_returns_to_zero():
    model = Model(hold=True)
    batcher = Batcher(model, max_queue_rows=5, inline=False)

    async def main():
        running = asyncio.ensure_future(batcher.submit(rows(1, 2)))  # in the model: 2 rows
        await until(model.started)
        waiting = asyncio.ensure_future(batcher.submit(rows(3, 4, 5)))  # waiting: 5 rows in all
        await asyncio.sleep(0)
        assert batcher.pending_rows == 5
        # One more row is refused at once: the coroutine raises on its first step, before any wait.
        refused = batcher.submit(rows(6))
        with pytest.raises(Overloaded):
            refused.send(None)
        with pytest.raises(Overloaded):
            await batcher.submit(rows(6, 7, 8, 9, 10, 11))
        assert batcher.pending_rows == 5
        model.release.set()
        answers = await asyncio.gather(running, waiting)
        assert batcher.pending_rows == 0
        # The room is back: a full-size request is accepted again.
        answers.append(await batcher.submit(rows(6, 7, 8, 9, 10)))
        return answers

    answers = run(main())
    assert answers == [expected(1, 2), expected(3, 4, 5), expected(6, 7, 8, 9, 10)]
    assert model.calls == [[1, 2], [3, 4, 5], [6, 7, 8, 9, 10]]
    assert batcher.pending_rows == 0


def test_a_request_larger_than_max_queue_rows_is_always_refused():
    model = Model()
    batcher = Batcher(model, max_queue_rows=3, inline=True)
    with pytest.raises(Overloaded):
        run(batcher.submit(rows(1, 2, 3, 4)))
    assert model.calls == []
    assert batcher.pending_rows == 0
    assert run(batcher.submit(rows(1, 2, 3))) == expected(1, 2, 3)


@MODES
def test_a_model_error_reaches_every_caller_of_its_batch_and_the_next_batch_is_served(inline):
    model = Model(fail_on=2)
    batcher = Batcher(model, max_queue_rows=100, inline=inline)

    async def main():
        outcomes = await asyncio.gather(
            *(batcher.submit(r) for r in (rows(1), rows(2), rows(3, 4))), return_exceptions=True
        )
        after = await batcher.submit(rows(5, 6))
        return outcomes, after

    outcomes, after = run(main())
    assert model.calls == [[1, 2, 3, 4], [5, 6]]
    for outcome in outcomes:
        assert isinstance(outcome, ValueError)
        assert str(outcome) == "model failed on a batch of 4"
    assert after == expected(5, 6)
    assert batcher.pending_rows == 0


@MODES
def test_a_cancelled_caller_does_not_break_the_others(inline):
    model = Model()
    batcher = Batcher(model, max_queue_rows=100, inline=inline)

    async def main():
        tasks = [asyncio.ensure_future(batcher.submit(r)) for r in (rows(1), rows(2, 3), rows(4))]
        await asyncio.sleep(0)  # all three are queued
        tasks[1].cancel()  # e.g. the client disconnected, or a timeout fired
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        after = await batcher.submit(rows(5))
        return outcomes, after

    outcomes, after = run(main())
    assert outcomes[0] == expected(1)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert outcomes[2] == expected(4)
    assert after == expected(5)
    assert model.calls == [[1, 2, 3, 4], [5]]
    assert batcher.pending_rows == 0


def test_a_caller_cancelled_while_the_threaded_model_runs_its_batch_does_not_break_the_others():
    model = Model(hold=True)
    batcher = Batcher(model, max_queue_rows=100, inline=False)

    async def main():
        tasks = [asyncio.ensure_future(batcher.submit(r)) for r in (rows(1), rows(2, 3), rows(4))]
        await until(model.started)  # the model is running the batch [1, 2, 3, 4]
        tasks[1].cancel()
        await asyncio.sleep(0)
        model.release.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        return outcomes, await batcher.submit(rows(5))

    outcomes, after = run(main())
    assert model.calls == [[1, 2, 3, 4], [5]]
    assert outcomes[0] == expected(1)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert outcomes[2] == expected(4)
    assert after == expected(5)
    assert batcher.pending_rows == 0


@MODES
def test_regression_answers_without_probabilities_are_sliced_too(inline):
    def regression(batch):
        return [float(row["x"]) / 2 for row in batch], None

    batcher = Batcher(regression, max_queue_rows=100, inline=inline)

    async def main():
        return await asyncio.gather(batcher.submit(rows(1, 2)), batcher.submit(rows(3)))

    assert run(main()) == [([0.5, 1.0], None), ([1.5], None)]


# --- Injected faults: the loop survives, every caller gets an answer or an exception, and the
# --- waiting-row count returns to zero on every path.


class LyingFuture(asyncio.Future):
    """A future that is cancelled between the batcher's `done()` check and its `set_result`, as a
    caller that goes away at that instant would be."""

    def set_result(self, result):
        self.cancel()
        raise asyncio.InvalidStateError("cancelled meanwhile")


@MODES
def test_a_future_cancelled_between_the_check_and_set_result_does_not_stop_the_others(inline):
    model = Model()
    batcher = Batcher(model, max_queue_rows=100, inline=inline)

    async def main():
        loop = asyncio.get_running_loop()
        real_create_future, made = loop.create_future, []

        def second_one_lies():
            made.append(LyingFuture(loop=loop) if len(made) == 1 else real_create_future())
            return made[-1]

        loop.create_future = second_one_lies
        outcomes = await asyncio.gather(
            *(batcher.submit(r) for r in (rows(1), rows(2, 3), rows(4))), return_exceptions=True
        )
        loop.create_future = real_create_future
        return outcomes, await batcher.submit(rows(5))

    outcomes, after = run(main())
    assert outcomes[0] == expected(1)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert outcomes[2] == expected(4)
    assert after == expected(5)
    assert model.calls == [[1, 2, 3, 4], [5]]
    assert batcher.pending_rows == 0


@MODES
@pytest.mark.parametrize(
    "answer",
    [
        lambda xs: ([10 * x for x in xs][:-1], [{"p": x} for x in xs]),  # one prediction short
        lambda xs: ([10 * x for x in xs], [{"p": x} for x in xs] + [{"p": 0}]),  # one probability too many
        lambda xs: [10 * x for x in xs],  # not (predictions, probabilities)
        lambda xs: None,
    ],
    ids=["short-predictions", "long-probabilities", "bare-list", "none"],
)
def test_an_answer_that_does_not_fit_the_batch_fails_every_caller_and_the_next_batch_is_served(
    inline, answer
):
    calls = []

    def model(batch):
        xs = [row["x"] for row in batch]
        calls.append(xs)
        return answer(xs) if len(calls) == 1 else expected(*xs)

    batcher = Batcher(model, max_queue_rows=100, inline=inline)

    async def main():
        outcomes = await asyncio.gather(
            *(batcher.submit(r) for r in (rows(1), rows(2, 3))), return_exceptions=True
        )
        return outcomes, await batcher.submit(rows(4, 5))

    outcomes, after = run(main())
    assert calls == [[1, 2, 3], [4, 5]]
    assert all(isinstance(outcome, ValueError) for outcome in outcomes)
    assert after == expected(4, 5)
    assert batcher.pending_rows == 0


@MODES
def test_numpy_like_probabilities_are_sliced_without_asking_their_truth_value(inline):
    class Strict(list):  # like a numpy array: bool() of it is an error
        def __bool__(self):
            raise ValueError("ambiguous truth value")

    def model(batch):
        xs = [row["x"] for row in batch]
        return [10 * x for x in xs], Strict({"p": x} for x in xs)

    batcher = Batcher(model, max_queue_rows=100, inline=inline)

    async def main():
        return await asyncio.gather(batcher.submit(rows(1, 2)), batcher.submit(rows(3)))

    assert run(main()) == [expected(1, 2), expected(3)]


def test_a_stopped_loop_task_answers_every_waiting_caller_and_the_next_submit_starts_a_new_one():
    model = Model(hold=True)
    batcher = Batcher(model, max_queue_rows=100, inline=False)

    async def main():
        running = asyncio.ensure_future(batcher.submit(rows(1, 2)))  # in the model
        await until(model.started)
        queued = [asyncio.ensure_future(batcher.submit(r)) for r in (rows(3), rows(4, 5))]
        await asyncio.sleep(0)
        assert batcher.pending_rows == 5
        batcher._task.cancel()  # as at shutdown, or any fault that ends the task
        outcomes = await asyncio.gather(running, *queued, return_exceptions=True)
        assert batcher.pending_rows == 0
        model.release.set()
        return outcomes, await batcher.submit(rows(6))

    outcomes, after = run(main())
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
    assert after == expected(6)
    assert batcher.pending_rows == 0


@MODES
def test_the_batcher_serves_again_in_a_new_event_loop(inline):
    # A task bound to a closed loop never runs again: the batcher must not queue work for it.
    model = Model()
    batcher = Batcher(model, max_queue_rows=100, inline=inline)
    assert run(batcher.submit(rows(1))) == expected(1)
    assert run(batcher.submit(rows(2, 3))) == expected(2, 3)
    assert model.calls == [[1], [2, 3]]
    assert batcher.pending_rows == 0


@pytest.mark.parametrize(
    ("compiled", "native", "inline"),
    [(object(), None, True), (None, "native", True), (None, "numpy", False), (None, None, False)],
)
def test_a_compiled_or_native_model_is_batched_on_the_loop_and_the_rest_in_a_thread(compiled, native, inline):
    from types import SimpleNamespace

    from pipelines.serving.bundle import LoadedModel
    from pipelines.serving.follower import make_arm

    loaded = LoadedModel(
        model=None,
        version="1",
        task="classification",
        features=[],
        meta={"limits": {"max_queue_rows": 8}},
        compiled=compiled,
        native=None if native is None else SimpleNamespace(name=native),
    )
    arm = make_arm(loaded)
    try:
        assert arm.batcher.inline is inline
    finally:
        arm.batcher.close()
