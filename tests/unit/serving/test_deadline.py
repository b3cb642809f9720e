"""pipelines/serving/middleware.py: Deadline, against BentoML's own TimeoutMiddleware as the oracle.

Both are driven as plain ASGI around the same inner apps; the answers must match, and Deadline must
leave no timer behind a finished request (BentoML's leaves one for the whole timeout).
"""

import asyncio
import json

import pytest
from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse, StreamingResponse

from pipelines.serving.middleware import Deadline, with_deadline

SCOPE = {"type": "http", "method": "POST", "path": "/predict", "headers": [], "query_string": b""}


async def drive(app, timeout: float = 5) -> tuple[list[dict], int]:
    """Sends one request through `app`; returns what was sent and the timers left on the loop."""
    sent: list[dict] = []
    pending = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive():
        if pending:
            return pending.pop()
        await asyncio.Event().wait()  # the client stays connected, and sends nothing more

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(app(dict(SCOPE), receive, send), timeout)
    loop = asyncio.get_running_loop()
    left = sum(1 for handle in loop._scheduled if not handle.cancelled())  # asyncio's own loop
    return sent, left


def status(sent: list[dict]) -> int:
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def body(sent: list[dict]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def fast(scope, receive, send):
    await receive()
    await PlainTextResponse("answer")(scope, receive, send)


async def slow(scope, receive, send):
    await asyncio.sleep(5)
    await PlainTextResponse("too late")(scope, receive, send)


async def slow_stream(scope, receive, send):
    """Starts its answer at once, then takes longer than the timeout to finish it."""

    async def parts():
        yield b"first,"
        await asyncio.sleep(0.15)
        yield b"second"

    await StreamingResponse(parts())(scope, receive, send)


@pytest.mark.parametrize("layer", [TimeoutMiddleware, Deadline])
def test_a_fast_answer_passes_unchanged(layer):
    sent, _ = asyncio.run(drive(layer(fast, timeout=1)))
    assert status(sent) == 200 and body(sent) == b"answer"


def test_no_timer_is_left_behind_a_finished_request_unlike_bentomls():
    _, left_by_bentoml = asyncio.run(drive(TimeoutMiddleware(fast, timeout=30)))
    _, left_by_deadline = asyncio.run(drive(Deadline(fast, timeout=30)))
    assert left_by_bentoml == 1  # the oracle: BentoML's timer outlives the request
    assert left_by_deadline == 0


@pytest.mark.parametrize("layer", [TimeoutMiddleware, Deadline])
def test_no_answer_within_the_timeout_is_a_504_with_bentomls_body(layer):
    sent, _ = asyncio.run(drive(layer(slow, timeout=0.05)))
    assert status(sent) == 504
    assert json.loads(body(sent)) == {"error": "Not able to process the request in 0.05 seconds"}
    assert b"too late" not in body(sent)


@pytest.mark.parametrize("layer", [TimeoutMiddleware, Deadline])
def test_an_answer_under_way_is_not_cut_off(layer):
    sent, _ = asyncio.run(drive(layer(slow_stream, timeout=0.05)))
    assert status(sent) == 200 and body(sent) == b"first,second"


def test_the_slow_app_is_cancelled_at_the_timeout():
    finished: list[bool] = []

    async def app(scope, receive, send):
        try:
            await asyncio.sleep(5)
        finally:
            finished.append(True)

    sent, _ = asyncio.run(drive(Deadline(app, timeout=0.05), timeout=1))
    assert status(sent) == 504 and finished == [True]


def test_other_scopes_pass_through_without_a_deadline():
    seen: list[str] = []

    async def lifespan(scope, receive, send):
        await asyncio.sleep(0.1)
        seen.append(scope["type"])

    asyncio.run(Deadline(lifespan, timeout=0.01)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


def test_with_deadline_swaps_bentomls_layer_in_place_with_its_timeout():
    app = Starlette(
        middleware=[
            Middleware(TimeoutMiddleware, timeout=7),
            Middleware(MaxConcurrencyMiddleware, max_concurrency=3),
        ]
    )
    assert with_deadline(app) is app
    assert [m.cls for m in app.user_middleware] == [Deadline, MaxConcurrencyMiddleware]
    assert app.user_middleware[0].kwargs == {"timeout": 7}


def test_with_deadline_leaves_an_app_whose_stack_is_built_alone():
    app = Starlette(middleware=[Middleware(TimeoutMiddleware, timeout=7)])
    app.middleware_stack = app.build_middleware_stack()  # what Starlette does at its first request
    with_deadline(app)
    assert [m.cls for m in app.user_middleware] == [TimeoutMiddleware]


def test_an_apps_own_failure_is_not_held_for_the_timeout_unlike_bentomls():
    async def broken(scope, receive, send):
        raise RuntimeError("the app failed before answering")

    async def own_timeout(scope, receive, send):
        async with asyncio.timeout(0.01):  # the app's own deadline, not the layer's
            await asyncio.sleep(1)

    with pytest.raises(RuntimeError):
        asyncio.run(drive(Deadline(broken, timeout=30)))
    with pytest.raises(TimeoutError):
        asyncio.run(drive(Deadline(own_timeout, timeout=30)))
    # The oracle: BentoML's layer waits on its timer, so the failure does not come out within 1 s.
    with pytest.raises(TimeoutError):
        asyncio.run(drive(TimeoutMiddleware(broken, timeout=30), timeout=1))
