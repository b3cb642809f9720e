"""ASGI guards that run before FastAPI parses anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipelines.serving.responses import error

DRAIN_LIMIT = 64 * 1024 * 1024  # bytes of an oversized body read and dropped before the 413


class BodyGuard:
    """ASGI middleware: POST bodies must be JSON and no larger than `max_bytes` (else 415 / 413).

    It buffers the body (bounded) and replays it, so an oversized body never reaches the parser.
    """

    def __init__(self, app: Any, max_bytes: int, count: Callable[[str], None]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.count = count

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
        if length.isdigit() and int(length) > self.max_bytes:
            return await self.too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self.too_large(scope, receive, send, more=more)
        body: bytes | None = b"".join(chunks)

        async def replay() -> dict:
            """The buffered body once; after it, the server's own messages (a disconnect)."""
            nonlocal body
            if body is None:
                return await receive()
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message

        return await self.app(scope, replay, send)

    async def too_large(self, scope: dict, receive: Callable, send: Callable, more: bool = True) -> None:
        """413, after reading (and dropping) what the client sends up to a bound, so that it sees
        the answer instead of a reset connection; a body past the bound is cut off."""
        self.count("body_too_large")
        drained = 0
        while more and drained < DRAIN_LIMIT:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)
        await error(413, "body_too_large", f"the body exceeds {self.max_bytes} bytes")(scope, receive, send)
