"""The service's routes, and nothing else: each route calls into the modules beside this one.

Every refusal is a 4xx (or 503 when overloaded) in the shape of `responses.error`, never a stack
trace and never the caller's input. The app is FastAPI, mounted into the BentoML service, so
BentoML's /docs.json, /livez, /readyz and /metrics cover it. Order of the guards for a POST:
`guards.BodyGuard` (media type, size), then FastAPI's parsing against `schema`, then the key.
"""

# No `from __future__ import annotations` here: FastAPI reads the route's annotations at runtime,
# and the request body's model is a local of create_app that a string annotation cannot reach.
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pipelines.serving import answers, schema
from pipelines.serving.batcher import Overloaded
from pipelines.serving.guards import BodyGuard
from pipelines.serving.responses import FastJSONResponse, error, validation_response
from pipelines.serving.worker import Worker, current_request_id

log = logging.getLogger("tabular_mlops.service")
PREDICT_PATH = "/predict"


def create_app(meta: dict[str, Any], worker_ref: Callable[[], Worker]) -> Any:
    """The FastAPI app for one packaged model; `worker_ref` gives the worker's state once loaded."""
    limits = meta["limits"]
    record = schema.record_model(meta["fields"], meta.get("optional_fields", {}), limits["max_string_length"])
    body_model = schema.request_model(record, limits["max_records"])
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
    app = FastAPI(title="tabular-mlops", docs_url=None, redoc_url=None, openapi_url=None)

    def count(outcome: str) -> None:
        worker_ref().count(outcome)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        response = validation_response(exc)
        count("malformed" if response.status_code == 400 else "invalid")
        return response

    @app.exception_handler(Exception)
    async def failed(_: Request, exc: Exception) -> JSONResponse:
        log.exception("prediction failed")
        count("error")
        return error(500, "internal_error", "the service failed; the request id is in the logs")

    async def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        # async: a plain `def` dependency would cost a hop to a worker thread on every request
        token = credentials.credentials if credentials else None
        if not worker_ref().keys.allows(token):
            raise _Unauthorized

    @app.exception_handler(_Unauthorized)
    async def unauthorized(_: Request, __: Exception) -> JSONResponse:
        count("unauthorized")
        return error(401, "unauthorized", "a valid API key is required", **{"WWW-Authenticate": "Bearer"})

    error_doc = {"description": "refused: the body names the field and the problem"}

    @app.post(
        PREDICT_PATH,
        response_model=answers.PredictResponse,
        response_model_exclude_none=True,
        dependencies=[Depends(authorized)],
        responses={code: error_doc for code in (400, 401, 413, 415, 422)}
        | {503: {"description": "overloaded; retry after Retry-After seconds"}},
        summary="Predict for 1..N records given in the raw data's column names",
    )
    async def predict(body: body_model) -> Any:  # type: ignore[valid-type]
        worker = worker_ref()
        started = time.perf_counter()
        rows = [r.model_dump() for r in body.records]
        try:
            predictions, probabilities = await worker.batcher.submit(rows)
        except Overloaded:
            return error(
                503, "overloaded", "too many rows are waiting; retry shortly", **{"Retry-After": "1"}
            )
        request_id = current_request_id()
        elapsed = time.perf_counter() - started
        latency_ms = elapsed * 1000
        worker.count("ok")
        worker.records.inc(len(rows))
        worker.latency.observe(elapsed)
        if worker.monitor is not None:
            worker.monitor(request_id, worker.loaded.version, rows, predictions, probabilities, latency_ms)
        answer = answers.response_body(request_id, worker.loaded.version, predictions, probabilities)
        # Built by us from plain values: FastAPI's re-validation against the response model
        # would cost more than the compiled model's call. The model still documents the schema.
        return FastJSONResponse(answer)

    @app.post("/empty", include_in_schema=False)
    async def empty() -> JSONResponse:
        """Does nothing: its latency is this service's HTTP floor (bench/serve.py measures it)."""
        return JSONResponse({})

    @app.get("/metadata", dependencies=[Depends(authorized)], responses={401: error_doc})
    async def metadata() -> dict[str, Any]:
        """The served model's version, lineage tags and metrics."""
        loaded = worker_ref().loaded
        keys = (
            "version",
            "registered_model",
            "run_id",
            "candidate",
            "task",
            "positive_class",
            "lineage",
            "metrics",
        )
        compiled = loaded.meta.get("compiled") or {}
        return {
            **{k: loaded.meta.get(k) for k in keys},
            "features": loaded.features,
            "classes": loaded.classes,
            # What answers, and the packaging-time evidence that it matches the promoted model.
            "runtime": {
                "name": loaded.runtime,
                "compile_reason": compiled.get("reason"),
                "parity": compiled.get("parity"),
                "versions": compiled.get("versions"),
            },
        }

    app.add_middleware(BodyGuard, max_bytes=limits["max_body_bytes"], count=count)
    return app


class _Unauthorized(Exception):
    pass
