"""pipelines/serving/guards.py: BodyGuard driven as plain ASGI, with a fake client and a fake app.

The client is a list of ASGI messages handed out by `receive` (then `http.disconnect`, as a server
does once the client is gone); the app records what it was called with and what it received.
"""

import asyncio
import json

import pytest

from pipelines.serving.guards import BodyGuard

MAX = 100  # bytes
DEADLINE = 5.0  # seconds to receive a body


class Client:
    """The server side of one connection: hands out the client's messages, records what is sent."""

    def __init__(self, *messages: dict) -> None:
        self.pending = list(messages)
        self.received = 0  # how many messages were taken by whoever called receive
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        self.received += 1
        if self.pending:
            return self.pending.pop(0)
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) <= 1, self.sent
        return starts[0]["status"] if starts else None

    def headers(self) -> dict[str, str]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return {k.decode().lower(): v.decode() for k, v in start["headers"]}

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


class App:
    """A downstream ASGI app: reads the whole body as any app would, records it, answers 200."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        call = {"scope": scope, "receive": receive, "send": send, "messages": []}
        self.calls.append(call)
        if scope["type"] == "http":
            while True:
                message = await receive()
                call["messages"].append(message)
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"downstream"})


def http_scope(method: str = "POST", content_type: str | None = "application/json", **extra: str) -> dict:
    headers = [(b"host", b"test")]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode("latin-1")))
    headers += [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]
    return {"type": "http", "method": method, "path": "/predict", "headers": headers}


def chunk(body: bytes, more: bool) -> dict:
    return {"type": "http.request", "body": body, "more_body": more}


def drive(scope: dict, client: Client) -> tuple[App, list[str]]:
    app, counted = App(), []
    guard = BodyGuard(app, max_bytes=MAX, count=counted.append, deadline=DEADLINE)

    async def main() -> None:
        await asyncio.wait_for(guard(scope, client.receive, client.send), timeout=2)

    asyncio.run(main())
    return app, counted


def assert_refused(client: Client, status: int, kind: str) -> None:
    assert client.status() == status
    assert client.headers()["content-type"].startswith("application/json")
    body = json.loads(client.body())
    assert body["error"] == kind
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) == {"error", "message"}


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
def test_non_post_requests_pass_through_untouched(method):
    # No JSON content type and a body far over the limit: none of it is the guard's business.
    scope = http_scope(method, content_type="text/plain", content_length=str(10 * MAX))
    client = Client(chunk(b"x" * (10 * MAX), False))
    app, counted = drive(scope, client)
    assert len(app.calls) == 1
    call = app.calls[0]
    assert call["scope"] is scope
    # Bound methods compare equal when they wrap the same method of the same object.
    assert call["receive"] == client.receive
    assert call["send"] == client.send
    assert call["messages"] == [chunk(b"x" * (10 * MAX), False)]
    assert client.status() == 200
    assert counted == []


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
def test_other_scope_types_pass_through(scope_type):
    scope = {"type": scope_type}
    client = Client()
    app, counted = drive(scope, client)
    assert len(app.calls) == 1
    assert app.calls[0]["scope"] is scope
    assert client.sent == []
    assert counted == []


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/json-patch+json",
        "json",
    ],
)
def test_post_without_application_json_is_refused_with_415(content_type):
    client = Client(chunk(b'{"records": []}', False))
    app, counted = drive(http_scope(content_type=content_type), client)
    assert app.calls == []
    assert_refused(client, 415, "unsupported_media_type")
    assert counted == ["unsupported_media_type"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        " application/json ;charset=UTF-8",
    ],
)
def test_application_json_with_parameters_or_any_case_is_accepted(content_type):
    client = Client(chunk(b'{"records": []}', False))
    app, counted = drive(http_scope(content_type=content_type), client)
    assert len(app.calls) == 1
    assert app.calls[0]["messages"] == [chunk(b'{"records": []}', False)]
    assert client.status() == 200
    assert counted == []


def test_content_length_over_the_limit_is_refused_with_413_before_the_app():
    body = b"x" * (MAX + 1)
    client = Client(chunk(body, False))
    app, counted = drive(http_scope(content_length=str(len(body))), client)
    assert app.calls == []
    assert_refused(client, 413, "body_too_large")
    assert counted == ["body_too_large"]


def test_content_length_over_the_limit_is_refused_from_the_header_before_any_body_is_buffered():
    # Sent in small chunks, so only the header can tell before the body has been read.
    client = Client(*[chunk(b"x" * 10, True) for _ in range(20)], chunk(b"x", False))
    decided_after = []
    guard = BodyGuard(
        App(),
        max_bytes=MAX,
        count=lambda kind: decided_after.append((kind, client.received)),
        deadline=DEADLINE,
    )
    scope = http_scope(content_length=str(201))
    asyncio.run(asyncio.wait_for(guard(scope, client.receive, client.send), timeout=2))
    assert decided_after == [("body_too_large", 0)]
    assert_refused(client, 413, "body_too_large")


def test_a_body_of_exactly_the_limit_is_accepted():
    body = b"y" * MAX
    client = Client(chunk(body[:60], True), chunk(body[60:], False))
    app, counted = drive(http_scope(content_length=str(MAX)), client)
    assert [call["messages"] for call in app.calls] == [[chunk(body, False)]]
    assert counted == []


def test_a_chunked_body_growing_past_the_limit_is_refused_with_413_and_never_reaches_the_app():
    # No Content-Length: only counting the chunks can tell. 40 + 40 + 40 > 100.
    chunks = [chunk(b"z" * 40, True) for _ in range(4)] + [chunk(b"z" * 40, False)]
    client = Client(*chunks)
    app, counted = drive(http_scope(), client)
    assert app.calls == []
    assert_refused(client, 413, "body_too_large")
    assert counted == ["body_too_large"]
    # The rest of the body was read and dropped, so the client sees the 413 (not a reset).
    assert client.pending == []


def test_a_body_larger_than_its_content_length_claims_is_still_refused():
    client = Client(chunk(b"z" * 60, True), chunk(b"z" * 60, False))
    app, counted = drive(http_scope(content_length="10"), client)
    assert app.calls == []
    assert_refused(client, 413, "body_too_large")
    assert counted == ["body_too_large"]


def test_a_body_split_over_several_messages_reaches_the_app_whole_as_one_message():
    parts = [b'{"records": [', b'{"a": 1}', b"", b', {"a": 2}', b"]}"]
    client = Client(*[chunk(p, True) for p in parts[:-1]], chunk(parts[-1], False))
    app, counted = drive(http_scope(), client)
    assert len(app.calls) == 1
    assert app.calls[0]["messages"] == [
        {"type": "http.request", "body": b'{"records": [{"a": 1}, {"a": 2}]}', "more_body": False}
    ]
    assert client.status() == 200
    assert client.body() == b"downstream"
    assert counted == []


def test_a_post_with_no_body_reaches_the_app_as_one_empty_message():
    client = Client(chunk(b"", False))
    app, _ = drive(http_scope(), client)
    assert app.calls[0]["messages"] == [chunk(b"", False)]


def test_a_client_disconnect_mid_body_sends_nothing_and_never_calls_the_app():
    client = Client(chunk(b'{"records": [', True), {"type": "http.disconnect"})
    app, counted = drive(http_scope(), client)
    assert app.calls == []
    assert client.sent == []
    assert counted == []


def test_a_client_disconnect_while_an_oversized_body_is_drained_sends_nothing():
    client = Client(chunk(b"z" * (MAX + 1), True), {"type": "http.disconnect"})
    app, _ = drive(http_scope(), client)
    assert app.calls == []
    assert client.sent == []


def test_after_the_body_the_app_sees_the_clients_disconnect_not_the_body_again():
    client = Client(chunk(b"{}", False))  # then the client goes away: http.disconnect
    seen = []

    async def app(scope, receive, send):
        seen.append(await receive())
        seen.append(await receive())

    guard = BodyGuard(app, max_bytes=MAX, count=lambda _: None, deadline=DEADLINE)

    async def main() -> None:
        await asyncio.wait_for(guard(http_scope(), client.receive, client.send), timeout=2)

    asyncio.run(main())
    assert seen[0] == chunk(b"{}", False)
    assert seen[1] == {"type": "http.disconnect"}


class SlowClient(Client):
    """A client that sends its chunks `gap` seconds apart, then nothing more (a held connection)."""

    def __init__(self, gap: float, *messages: dict) -> None:
        super().__init__(*messages)
        self.gap = gap

    async def receive(self) -> dict:
        self.received += 1
        await asyncio.sleep(self.gap)
        if self.pending:
            return self.pending.pop(0)
        await asyncio.sleep(3600)  # declared more body, sends nothing
        return {"type": "http.disconnect"}


def guarded(client: Client, deadline: float, scope: dict | None = None) -> tuple[App, list[str], float]:
    app, counted = App(), []
    guard = BodyGuard(app, max_bytes=MAX, count=counted.append, deadline=deadline)

    async def main() -> float:
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(guard(scope or http_scope(), client.receive, client.send), timeout=5)
        return asyncio.get_running_loop().time() - started

    return app, counted, asyncio.run(main())


def test_a_body_that_never_comes_gets_408_at_the_deadline_and_the_connection_closes():
    client = SlowClient(0.0)  # headers declared a body; not a byte follows
    app, counted, seconds = guarded(client, deadline=0.2, scope=http_scope(content_length="50"))
    assert 0.2 <= seconds < 1.0
    assert_refused(client, 408, "body_timeout")
    assert client.headers()["connection"] == "close"
    assert app.calls == [] and counted == ["body_timeout"]


def test_a_body_dripped_slower_than_the_deadline_gets_408_even_though_each_chunk_is_quick():
    chunks = [chunk(b" ", True) for _ in range(50)] + [chunk(b"{}", False)]
    client = SlowClient(0.02, *chunks)  # 50 chunks, 20 ms apart: 1 s in all, over a 0.3 s deadline
    app, counted, seconds = guarded(client, deadline=0.3)
    assert seconds < 0.8
    assert_refused(client, 408, "body_timeout")
    assert app.calls == [] and counted == ["body_timeout"]


def test_a_body_within_the_deadline_is_served():
    client = SlowClient(0.01, chunk(b'{"a"', True), chunk(b": 1}", False))
    app, counted, _ = guarded(client, deadline=1.0)
    assert client.status() == 200 and len(app.calls) == 1 and counted == []


def test_an_oversized_body_drained_past_the_deadline_still_gets_its_413_and_a_close():
    client = SlowClient(0.0, chunk(b"z" * (MAX + 1), True))  # then holds the connection
    app, counted, seconds = guarded(client, deadline=0.2)
    assert seconds < 1.0
    assert_refused(client, 413, "body_too_large")
    assert client.headers()["connection"] == "close"
    assert app.calls == [] and counted == ["body_too_large"]
