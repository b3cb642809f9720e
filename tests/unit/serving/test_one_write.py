"""pipelines/serving/middleware.py: one_write, with a stand-in request cycle and with real uvicorn.

The real-server test counts the writes that reach uvicorn's own transport for the same answer,
with and without `one_write`: uvicorn's send writes the head and the body apart (2), and
one_write must make it 1 without changing a byte of what the client reads.
"""

import asyncio
import http.client
import threading
import time

import pytest
import uvicorn
from starlette.responses import PlainTextResponse

from pipelines.serving.middleware import HeldWrites, one_write


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed_after: int | None = None

    def write(self, data: bytes) -> None:
        assert self.closed_after is None, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed_after = len(self.writes)

    def is_closing(self) -> bool:
        return self.closed_after is not None


class Cycle:
    """What one_write relies on in uvicorn's request cycle: `send` writes the head at the start
    message and each body part at its own, through `self.transport`; closes when asked to."""

    def __init__(self, fail_on_body: bool = False) -> None:
        self.transport = Transport()
        self.fail_on_body = fail_on_body

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            head = b"HTTP/1.1 %d OK\r\n" % message["status"]
            head += b"".join(k + b": " + v + b"\r\n" for k, v in message.get("headers", []))
            self.transport.write(head + b"\r\n")
            self.close = (b"connection", b"close") in message.get("headers", [])
            return
        if self.fail_on_body:
            raise RuntimeError("Response content longer than Content-Length")
        self.transport.write(message.get("body", b""))
        if not message.get("more_body", False) and self.close:
            self.transport.close()


def send_all(send, *messages: dict) -> None:
    async def go():
        for message in messages:
            await send(message)

    asyncio.run(go())


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]}
BODY = {"type": "http.response.body", "body": b"data", "more_body": False}


def test_head_and_body_go_out_as_one_write_in_order():
    cycle = Cycle()
    real = cycle.transport
    send_all(one_write(cycle.send), START, BODY)
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndata"]
    assert cycle.transport is real


def test_a_closing_answer_is_written_before_the_close():
    cycle = Cycle()
    real = cycle.transport
    start = {**START, "headers": [*START["headers"], (b"connection", b"close")]}
    send_all(one_write(cycle.send), start, BODY)
    assert len(real.writes) == 1 and real.writes[0].endswith(b"data")
    assert real.closed_after == 1


def test_a_streamed_answer_sends_its_head_with_the_first_part_then_each_part():
    cycle = Cycle()
    real = cycle.transport
    first = {"type": "http.response.body", "body": b"one,", "more_body": True}
    last = {"type": "http.response.body", "body": b"two", "more_body": False}
    send_all(one_write(cycle.send), START, first, last)
    assert real.writes[0].endswith(b"\r\n\r\none,") and real.writes[1:] == [b"two"]


def test_a_failing_send_still_hands_back_the_transport_and_what_was_held():
    cycle = Cycle(fail_on_body=True)
    real = cycle.transport
    with pytest.raises(RuntimeError):
        send_all(one_write(cycle.send), START, BODY)
    assert cycle.transport is real
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n"]


def test_any_other_send_is_returned_as_it_is():
    async def plain(message):
        return None

    assert one_write(plain) is plain
    assert isinstance(HeldWrites(Transport()).is_closing(), bool)  # the rest is the real transport's


def serve(app) -> tuple[uvicorn.Server, int]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, loop="uvloop", http="httptools", log_level="error")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not (server.started and server.servers):
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return server, server.servers[0].sockets[0].getsockname()[1]


def test_real_uvicorn_writes_an_answer_once_instead_of_twice():
    counted: dict[str, int] = {}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        cycle = send.__self__  # uvicorn's request cycle
        real = cycle.transport
        writes = [0]

        class Counting:
            def write(self, data):
                writes[0] += 1
                real.write(data)

            def __getattr__(self, name):
                return getattr(real, name)

        cycle.transport = Counting()
        coalesce = scope["path"] == "/one"
        await PlainTextResponse("x" * 300)(scope, receive, one_write(send) if coalesce else send)
        cycle.transport = real
        counted[scope["path"]] = writes[0]

    server, port = serve(app)
    try:
        answers = {}
        for path in ("/two", "/one"):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", path)
            response = connection.getresponse()
            answers[path] = (response.status, response.getheader("content-length"), response.read())
            connection.close()
        deadline = time.monotonic() + 5  # the app counts just after its last write
        while len(counted) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        server.should_exit = True
    assert counted == {"/two": 2, "/one": 1}
    assert answers["/one"] == answers["/two"] == (200, "300", b"x" * 300)
