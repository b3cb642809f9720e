"""Driving an ASGI app in-process with one POST, for unit tests of the service's layers."""

import asyncio


def post(app, body: bytes, headers: list[tuple[bytes, bytes]], path: str = "/predict") -> list[dict]:
    """POST `body` in one message to `app`; the messages it sent back."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "server": ("test", 80),
        "client": ("127.0.0.1", 1),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=5))
    return sent
