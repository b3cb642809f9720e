"""The outermost ASGI layer, around BentoML's whole app: it refuses before anything is spent.

BentoML stacks its own middleware (metrics, tracing, access log, timeout, max concurrency) around
the routes, and `Service.add_asgi_middleware` lands inside them. This layer sits outside all of
them (service.py installs it through `bentoml.service(service_class=...)`), so that:

- a keyless or wrong-key request to a protected route (every POST, and GET /metadata) is answered
  401 at once, before its body is read and before it holds a concurrency slot, with
  `Connection: close` so the connection is not kept busy either;
- an unknown path or method is answered 404 / 405 here, so BentoML's metrics, which label
  requests with the raw path, only ever see the service's own paths;
- every answer that another layer gives in its own shape (BentoML's 429 and 504, Starlette's 404
  and 405, FastAPI's `{"detail": ...}`) is rewritten into the project's error shape and counted;
- /readyz says whether the service is open (`"auth": "off"`).

The hot path pays one dict lookup, one key comparison and one wrapped `send` that looks at the
status of the answer's first message.

It also recycles keep-alive connections (`Recycler`): the workers share one listening socket, and
a worker woken by a burst of connections accepts all that are waiting, so a client that opens its
pool at once (wrk, any pooled client) can land every connection on one worker while the other
idles. A connection is answered `Connection: close` after about `max_requests` requests; the
client reconnects, and the new connection goes to whichever worker accepts first, usually the
idler one, so connections drift toward an even spread at the cost of one reconnect per
~`max_requests` requests.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipelines.serving.auth import ApiKeys, bearer_token
from pipelines.serving.responses import error_body, foreign, outcome_of

OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})  # probes and scrapers: no key
PROTECTED_GETS = frozenset({"/metadata"})
MAX_FOREIGN_BODY = 64 * 1024  # bytes of another layer's error body held to look at its shape


def known_routes(app: Any) -> dict[str, frozenset[str]]:
    """Every path the app serves, with its methods: plain routes, mounted apps' routes, and the
    files of mounted static folders (BentoML's docs page)."""
    routes: dict[str, set[str]] = {}
    for route in getattr(app, "routes", []):
        methods = getattr(route, "methods", None)
        if methods is not None and "{" not in route.path:
            routes.setdefault(route.path, set()).update(methods)
            continue
        inner = getattr(route, "app", None)
        folder = getattr(inner, "directory", None)
        if folder is not None:
            prefix = route.path.rstrip("/")
            for file in Path(folder).rglob("*"):
                if file.is_file():
                    routes.setdefault(f"{prefix}/{file.relative_to(folder).as_posix()}", set()).update(
                        {"GET", "HEAD"}
                    )
        elif inner is not None and route.path in ("", "/"):
            for path, found in known_routes(inner).items():
                routes.setdefault(path, set()).update(found)
    return {path: frozenset(methods) for path, methods in routes.items()}


async def answer(send: Callable, status: int, body: dict[str, Any], headers: Mapping[str, str]) -> None:
    """A JSON answer sent straight to the server, without the app."""
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def is_project_error(body: bytes) -> bool:
    """Whether an error body already has the project's shape (so it was also counted)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), str) and "message" in parsed


class Recycler:
    """Counts requests per connection (by client address and port) and says when to close one.

    Each connection gets a budget drawn between half and 1.5 times `max_requests`, so that a pool
    opened at once is not closed at once. 0 turns recycling off."""

    def __init__(self, max_requests: int, seed: int | None = None, max_tracked: int = 10_000) -> None:
        self.max_requests = max_requests
        self.max_tracked = max_tracked
        self._left: dict[Any, int] = {}
        self._random = random.Random(seed)

    def closes(self, client: Any) -> bool:
        """Whether the answer to this request should close its connection."""
        if self.max_requests <= 0 or client is None:
            return False
        left = self._left.get(client)
        if left is None:
            if len(self._left) >= self.max_tracked:  # connections that closed on their own: forget them
                self._left.clear()
            half = max(self.max_requests // 2, 1)
            left = self._random.randint(half, self.max_requests + half)
        if left <= 1:
            self._left.pop(client, None)
            return True
        self._left[client] = left - 1
        return False


class HeldWrites:
    """Stands in for a uvicorn response's transport: keeps its writes, then gives them to the
    real transport as one write (`flush`, or `close`, which flushes first). Everything else is
    the real transport's."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def flush(self) -> None:
        if self.chunks:
            data = b"".join(self.chunks)
            self.chunks = []
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def one_write(send: Callable) -> Callable:
    """`send`, with the answer's status line, headers and first body part written as one write.

    uvicorn writes the status line and headers when the answer starts, and the body when it
    comes; uvloop sends each write at once, so a small answer costs two TCP segments, two
    syscalls on each side and a second wake-up of the client. This holds the first write until
    the first body part (a few microseconds later, in the same task) and writes both together.
    Only for uvicorn's own `send` (a method of its request cycle, with a `transport`); any other
    server's `send` is returned as it is."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None or not callable(getattr(transport, "write", None)):
        return send
    held = HeldWrites(transport)

    async def sending(message: dict) -> None:
        starting = message["type"] == "http.response.start"
        if starting:
            cycle.transport = held
        try:
            await send(message)
        except BaseException:
            starting = False  # whatever was held goes out now, and the real transport is back
            raise
        finally:
            if not starting:
                cycle.transport = transport
                held.flush()

    return sending


class Deadline:
    """BentoML's request timeout (`traffic.timeout`), kept inside the request's own task.

    BentoML's `TimeoutMiddleware` runs every request in a task of its own and arms a timer that is
    never cancelled: each request leaves a timer, a future and a closure alive for the whole
    timeout (30 s). At 1,000 requests a second that is some 100,000 live objects per worker, which
    the garbage collector's older generations walk again and again: full collections of about
    100 ms while serving. This answers the same (504 when no answer has started within the
    timeout; once it has started, no limit) with `asyncio.timeout`, whose timer goes with the request.
    An app that fails before answering fails at once here; under BentoML's layer its failure
    reached the server (a 500) only when the timer ran out.
    """

    def __init__(self, app: Any, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        started = False
        deadline = asyncio.timeout(self.timeout)

        async def sending(message: dict) -> None:
            nonlocal started
            if not started:
                started = True
                deadline.reschedule(None)  # an answer under way is not cut off
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, sending)
        except TimeoutError:
            if started or not deadline.expired():  # an answer under way, or the app's own TimeoutError
                raise
            await answer(
                send, 504, {"error": f"Not able to process the request in {self.timeout} seconds"}, {}
            )


def with_deadline(app: Any) -> Any:
    """BentoML's Starlette app with its `TimeoutMiddleware` swapped for `Deadline` (same timeout),
    before the app builds its middleware stack; an app without one is returned as it is."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from starlette.middleware import Middleware

    stack = getattr(app, "user_middleware", None)
    if getattr(app, "middleware_stack", None) is not None or not stack:
        return app
    for i, layer in enumerate(stack):
        if layer.cls is TimeoutMiddleware:
            stack[i] = Middleware(Deadline, **layer.kwargs)
    return app


def closing_send(send: Callable) -> Callable:
    """`send`, with `Connection: close` added to the answer's headers."""

    async def closing(message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return closing


class Front:
    """ASGI middleware around the whole service: auth first, known routes only, one error shape."""

    def __init__(
        self,
        app: Any,
        keys: ApiKeys,
        routes: Mapping[str, frozenset[str]],
        count: Callable[[str], None],
        recycler: Recycler | None = None,
        coalesce: bool = True,
    ) -> None:
        self.app = app
        self.coalesce = coalesce
        self.keys = keys
        self.routes = routes
        self.count = count
        self.recycler = recycler or Recycler(0)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.coalesce:
            send = one_write(send)
        path, method = scope["path"], scope["method"]
        if path == "/readyz":
            return await self.app(scope, receive, self.readyz_send(send))
        protected = method == "POST" or path in PROTECTED_GETS
        if protected and not self.keys.allows(bearer_token(scope["headers"])):
            # Nothing of the request is read: the body stays unread and the connection closes.
            return await self.refuse(
                send, 401, "unauthorized", "a valid API key is required", WWW_Authenticate="Bearer"
            )
        allowed = self.routes.get(path)
        if allowed is None:
            return await self.refuse(send, 404, "not_found", "no such endpoint")
        if method not in allowed:
            return await self.refuse(
                send,
                405,
                "method_not_allowed",
                "this endpoint does not take that method",
                Allow=", ".join(sorted(allowed)),
            )
        if self.recycler.closes(scope.get("client")):
            send = closing_send(send)
        return await self.app(scope, receive, self.shaped_send(send))

    async def refuse(self, send: Callable, status: int, kind: str, message: str, **headers: str) -> None:
        self.count(kind)
        headers = {k.replace("_", "-"): v for k, v in headers.items()}
        await answer(send, status, error_body(kind, message), {**headers, "Connection": "close"})

    def shaped_send(self, send: Callable) -> Callable:
        """`send`, with error answers in another layer's shape rewritten into ours and counted."""
        state = "start"  # -> "pass" (a success, or ours), "hold" (an error being looked at), "done"
        held: list[dict] = []

        async def shaped(message: dict) -> None:
            nonlocal state
            if state == "pass":
                return await send(message)
            if state == "start":
                if message["type"] != "http.response.start" or message["status"] < 400:
                    state = "pass"
                    return await send(message)
                state = "hold"
                held.append(message)
                return None
            if state == "done":
                return None  # the rest of a long foreign body is dropped
            held.append(message)
            body = b"".join(m.get("body", b"") for m in held[1:])
            more = message.get("more_body", False)
            if more and len(body) <= MAX_FOREIGN_BODY:
                return None
            state = "done"
            if not more and is_project_error(body):
                await send(held[0])
                return await send({"type": "http.response.body", "body": body, "more_body": False})
            return await self.rewrite(send, held[0])

        return shaped

    async def rewrite(self, send: Callable, start: dict) -> None:
        status = start["status"]
        kind, message = foreign(status)
        self.count(outcome_of(kind))
        kept = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in start.get("headers", [])
            if k.lower() in (b"retry-after", b"allow", b"www-authenticate", b"connection")
        }
        if status in (429, 503):
            kept.setdefault("Retry-After", "1")
        await answer(send, status, error_body(kind, message), kept)

    def readyz_send(self, send: Callable) -> Callable:
        """BentoML's /readyz answer, with a JSON body that also says whether keys are required."""
        status = 0

        async def readyz(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                return None
            if message.get("more_body", False):
                return None
            if status == 200:
                return await answer(send, 200, {"status": "ready", "auth": self.keys.mode}, {})
            # Not counted: a readiness probe is not a prediction request. Counted, a probe every
            # second while the model loads read as an 18 % error rate in `make monitor` and /metrics.
            body = {**error_body("not_ready", "the service is not ready to answer"), "auth": self.keys.mode}
            return await answer(send, 503, body, {"Retry-After": "1"})

        return readyz
