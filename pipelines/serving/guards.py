"""ASGI guards that run before FastAPI parses anything."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pipelines.serving.responses import error

DRAIN_LIMIT = 64 * 1024 * 1024  # bytes of an oversized body read and dropped before the 413


class BodyGuard:
    """ASGI middleware: POST bodies must be JSON, no larger than `max_bytes`, and fully received
    within `deadline` seconds of the request's headers (else 415 / 413 / 408).

    It buffers the body (bounded) and replays it, so an oversized body never reaches the parser,
    and a client that declares a body and then sends it slowly (or never) holds its concurrency
    slot for `deadline` seconds at most, not for the whole request timeout.
    """

    def __init__(self, app: Any, max_bytes: int, count: Callable[[str], None], deadline: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.count = count
        self.deadline = deadline

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            self.count("unsupported_media_type")
            return await error(415, "unsupported_media_type", "send the body as application/json")(
                scope, receive, send
            )
        length = headers.get("content-length", "")
        read: list[bytes] | bool | None = None  # the chunks; past the limit, whether more is coming
        oversized = length.isdigit() and int(length) > self.max_bytes  # known before any byte
        try:
            async with asyncio.timeout(self.deadline):
                if not oversized:
                    read = await self.read(receive)
                    oversized = isinstance(read, bool)
                if oversized and not await self.drain(receive, more=read is not False):
                    return None  # the client left
        except TimeoutError:
            if oversized:  # the rest of an oversized body was slow: answer, and close
                return await self.too_large(scope, receive, send, Connection="close")
            self.count("body_timeout")
            message = f"the body was not received within {self.deadline:g} s"
            return await error(408, "body_timeout", message, Connection="close")(scope, receive, send)
        if oversized:
            return await self.too_large(scope, receive, send)
        if read is None:  # the client left
            return None
        body: bytes | None = b"".join(read)

        async def replay() -> dict:
            """The buffered body once; after it, the server's own messages (a disconnect)."""
            nonlocal body
            if body is None:
                return await receive()
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message

        return await self.app(scope, replay, send)

    async def read(self, receive: Callable) -> list[bytes] | bool | None:
        """The body's chunks; None if the client left; past `max_bytes`, whether more is coming."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return more
        return chunks

    async def drain(self, receive: Callable, more: bool) -> bool:
        """Read and drop what the client still sends of an oversized body, up to a bound, so that
        it sees the 413 instead of a reset connection; False if the client left. Counted at once:
        the decision is made before the drain."""
        self.count("body_too_large")
        drained = 0
        while more and drained < DRAIN_LIMIT:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)
        return True

    async def too_large(self, scope: dict, receive: Callable, send: Callable, **headers: str) -> None:
        message = f"the body exceeds {self.max_bytes} bytes"
        await error(413, "body_too_large", message, **headers)(scope, receive, send)
