"""POST /predict answered inside BentoML's middleware, without the mounted FastAPI app.

Profiled under wrk at 8 connections (py-spy on one worker), about a quarter of a worker's CPU per
/predict went to the layers between BentoML's middleware and the route: Starlette's router and
mount, FastAPI's own middleware stack, its request wrapper and dependency solving. On two cores
that cost is queueing, and queueing is the tail. `DirectPredict` answers POST /predict before those
layers, with the steps the route takes (FastAPI's `get_request_handler` and
`request_body_to_args`): the body guard, `json.loads`, the request model's validation with the
same error locations, then the route's own code (`app.serve_predict`).

What stays around it: middleware.Front (the key, first), and BentoML's metrics, tracing (the
request id), timeout and concurrency limit, since it is added with `Service.add_asgi_middleware`,
inside them. The FastAPI route stays as the documented one (OpenAPI), and
tests/unit/serving/test_direct.py holds the two to the same answers and the same counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from pipelines.serving.app import PREDICT_PATH, request_body_model, serve_predict
from pipelines.serving.guards import BodyGuard
from pipelines.serving.responses import error, foreign, outcome_of, validation_response
from pipelines.serving.worker import Worker

log = logging.getLogger("tabular_mlops.service")
_UNSET = object()


class PredictEndpoint:
    """POST /predict as a bare ASGI app, after `guards.BodyGuard` has received the whole body."""

    def __init__(
        self, body_model: type[BaseModel], worker_ref: Callable[[], Worker], count: Callable[[str], None]
    ) -> None:
        self.body_model = body_model
        self.worker_ref = worker_ref
        self.count = count

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        message = await receive()  # the guard replays the whole body as one message
        response = await self.respond(scope["headers"], message.get("body", b""))
        await response(scope, receive, send)

    async def respond(self, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
        try:
            payload = json.loads(body) if body else _UNSET  # what Starlette's Request.json() does
        except json.JSONDecodeError as exc:
            problem = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error"}
            return self.invalid([{**problem, "input": {}, "ctx": {"error": exc.msg}}])
        except Exception:  # deep nesting, huge integers, invalid UTF-8: FastAPI's 400
            kind, message = foreign(400)
            self.count(outcome_of(kind))
            return error(400, kind, message)
        if payload is _UNSET:
            return self.invalid(
                [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
            )
        try:
            parsed = self.body_model.model_validate(payload, from_attributes=True)
        except ValidationError as exc:
            return self.invalid([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)])
        try:
            return await serve_predict(self.worker_ref(), headers, parsed.records)  # type: ignore[attr-defined]
        except Exception:
            log.exception("prediction failed")
            self.count("error")
            return error(500, "internal_error", "the service failed; the request id is in the logs")

    def invalid(self, errors: list[dict[str, Any]]) -> Response:
        response = validation_response(RequestValidationError(errors))
        self.count("malformed" if response.status_code == 400 else "invalid")
        return response


class DirectPredict:
    """ASGI middleware (`Service.add_asgi_middleware`): POST /predict to `endpoint`, the rest on."""

    def __init__(self, app: Any, endpoint: Any) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] == PREDICT_PATH and scope["method"] == "POST":
            return await self.endpoint(scope, receive, send)
        return await self.app(scope, receive, send)


def predict_endpoint(meta: dict[str, Any], worker_ref: Callable[[], Worker]) -> Any:
    """POST /predict as a bare ASGI app, the same checks and answers as the FastAPI route, behind
    the same body guard (`direct.DirectPredict` serves it)."""
    limits = meta["limits"]

    def count(outcome: str) -> None:
        worker_ref().count(outcome)

    endpoint = PredictEndpoint(request_body_model(meta), worker_ref, count)
    return BodyGuard(
        endpoint, max_bytes=limits["max_body_bytes"], count=count, deadline=limits["body_timeout_seconds"]
    )
