"""pipelines/serving/middleware.py: keep-alive connections recycled after about N requests
(`Recycler`), and `Front` adding `Connection: close` to that answer only."""

import asyncio

import pytest
from starlette.responses import PlainTextResponse

from pipelines.serving.auth import ApiKeys
from pipelines.serving.middleware import Front, Recycler

KEY = b"k-123"
ROUTES = {"/predict": frozenset({"POST"}), "/livez": frozenset({"GET", "HEAD"})}


def requests_until_closed(recycler: Recycler, client, limit: int = 10_000) -> int:
    for n in range(1, limit + 1):
        if recycler.closes(client):
            return n
    return 0


@pytest.mark.parametrize("max_requests", [1, 2, 10, 100])
def test_each_connection_closes_after_half_to_one_and_a_half_times_the_budget(max_requests):
    recycler = Recycler(max_requests, seed=1)
    lives = [requests_until_closed(recycler, ("127.0.0.1", port)) for port in range(2000, 2300)]
    low, high = max(max_requests // 2, 1), max_requests + max(max_requests // 2, 1)
    assert all(low <= n <= high for n in lives), (min(lives), max(lives))
    if max_requests >= 10:  # spread out, so a pool opened at once is not closed at once
        assert len(set(lives)) > max_requests // 2
        assert abs(sum(lives) / len(lives) - max_requests) < 0.15 * max_requests


def test_a_closed_connection_s_address_reused_starts_a_fresh_budget():
    recycler = Recycler(10, seed=2)
    first = requests_until_closed(recycler, ("127.0.0.1", 5000))
    second = requests_until_closed(recycler, ("127.0.0.1", 5000))
    assert 5 <= first <= 15 and 5 <= second <= 15


def test_connections_are_counted_apart():
    recycler = Recycler(4, seed=3)
    a, b = ("127.0.0.1", 1), ("127.0.0.1", 2)
    closes_a = [recycler.closes(a) for _ in range(6)]  # budget 2..6: closes once within 6
    assert closes_a.count(True) == 1
    assert not recycler.closes(b)  # b's first request: a's count did not touch it


@pytest.mark.parametrize("client", [None, ("127.0.0.1", 9)])
def test_off_never_closes_and_an_unknown_client_is_never_closed(client):
    off = Recycler(0)
    assert not any(off.closes(("127.0.0.1", 9)) for _ in range(1000))
    on = Recycler(1, seed=0)
    if client is None:
        assert not any(on.closes(None) for _ in range(100))
    else:
        assert 1 <= requests_until_closed(on, client) <= 2


def test_what_it_tracks_stays_bounded_when_clients_leave_on_their_own():
    recycler = Recycler(1000, seed=4, max_tracked=50)
    for port in range(10_000):
        recycler.closes(("127.0.0.1", port))
    assert len(recycler._left) <= 50


class Sent:
    def __init__(self) -> None:
        self.messages: list[dict] = []

    async def receive(self) -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(self, message: dict) -> None:
        self.messages.append(message)

    def headers(self) -> list[tuple[bytes, bytes]]:
        return next(m for m in self.messages if m["type"] == "http.response.start")["headers"]


async def inner(scope, receive, send):
    await receive()
    await PlainTextResponse("inner", headers={"Connection": "keep-alive"})(scope, receive, send)


def request(port: int) -> dict:
    return {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": [(b"authorization", b"Bearer " + KEY)],
        "query_string": b"",
        "client": ("127.0.0.1", port),
    }


def test_front_closes_the_connection_every_half_to_one_and_a_half_budgets_and_only_then():
    front = Front(inner, ApiKeys([KEY.decode()]), ROUTES, lambda _: None, Recycler(4, seed=5))
    closed_at = []
    for n in range(1, 41):
        sent = Sent()
        asyncio.run(front(request(7), sent.receive, sent.send))
        connection = [v for k, v in sent.headers() if k.lower() == b"connection"]
        assert len(connection) == 1  # the app's own keep-alive header is replaced, not doubled
        assert sent.messages[-1]["body"] == b"inner"  # the answer itself is untouched
        if connection == [b"close"]:
            closed_at.append(n)
    gaps = [b - a for a, b in zip([0, *closed_at], closed_at, strict=False)]
    assert gaps and all(2 <= g <= 6 for g in gaps), closed_at  # budget 4: between 2 and 6
    assert 40 - closed_at[-1] < 6


def test_front_without_a_recycler_never_closes_a_keyed_connection():
    front = Front(inner, ApiKeys([KEY.decode()]), ROUTES, lambda _: None)
    for _ in range(50):
        sent = Sent()
        asyncio.run(front(request(8), sent.receive, sent.send))
        assert (b"connection", b"close") not in sent.headers()
