"""The service's own JSON answers: fast rendering, and one error shape for every refusal.

Every refusal is `{"error": <kind>, "message": <text>[, "field": <name>]}` with a 4xx (or 503),
never a stack trace and never the caller's input: neither values nor the names of keys the
contract does not know.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic_core import to_json

# Answers that another layer (BentoML, Starlette, FastAPI) gives in its own shape, as this
# service's kind and message. The kind is also the outcome label they are counted under.
FOREIGN = {
    400: ("malformed", "the request could not be parsed"),
    404: ("not_found", "no such endpoint"),
    405: ("method_not_allowed", "this endpoint does not take that method"),
    408: ("timeout", "the request was not received in time"),
    413: ("body_too_large", "the body is too large"),
    429: ("too_many_requests", "too many requests in flight; retry shortly"),
    500: ("internal_error", "the service failed; the request id is in the logs"),
    503: ("unavailable", "the service cannot answer now; retry shortly"),
    504: ("timeout", "the request took too long to answer"),
}


def error(status: int, kind: str, message: str, field: str | None = None, **headers: str) -> JSONResponse:
    return JSONResponse(error_body(kind, message, field), status_code=status, headers=headers or None)


def error_body(kind: str, message: str, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": kind, "message": message}
    if field is not None:
        body["field"] = field
    return body


def foreign(status: int) -> tuple[str, str]:
    """The kind and message of a status another layer answered, in this service's words."""
    if status in FOREIGN:
        return FOREIGN[status]
    return (
        ("internal_error", FOREIGN[500][1])
        if status >= 500
        else (f"http_{status}", "the request was refused")
    )


def outcome_of(kind: str) -> str:
    """The metric label of an error kind: one per kind, `error` for a failure of ours."""
    return "error" if kind == "internal_error" else kind


class FastJSONResponse(JSONResponse):
    """JSON rendered by pydantic-core (Rust): ~4x faster than json.dumps for 1,000 records."""

    def render(self, content: Any) -> bytes:
        return to_json(content)


def _field(error: dict) -> str:
    """`records.0.<column>` from pydantic's location, without FastAPI's leading `body`. For a key
    outside the contract the location ends in the caller's own key: it is cut off, never echoed."""
    loc = tuple(error["loc"])
    parts = loc[1:] if loc[:1] == ("body",) else loc
    if error["type"] == "extra_forbidden":
        parts = parts[:-1]
    return ".".join(str(part) for part in parts)


def _problem(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        return "a key outside the contract (allowed: the features and the id columns)"
    return error["msg"]


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """One 4xx naming the first problem's field; pydantic's `input` is dropped, never echoed."""
    errors = exc.errors()
    first = errors[0] if errors else {"type": "invalid", "loc": (), "msg": "invalid request"}
    if first["type"] == "json_invalid":
        return error(400, "malformed_json", "the body is not valid JSON")
    if first["type"] == "missing" and tuple(first["loc"]) == ("body",):
        return error(400, "empty_body", 'the body is empty; send {"records": [...]}')
    problems = [{"field": _field(e), "problem": _problem(e)} for e in errors[:20]]
    body = {
        "error": "invalid_request",
        "message": _problem(first),
        "field": _field(first),
        "problems": problems,
    }
    return JSONResponse(body, status_code=422)
