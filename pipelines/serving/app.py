"""The service's routes, and nothing else: each route calls into the modules beside this one.

Every refusal is a 4xx (or 503) in the shape of `responses.error`, never a stack trace and never
the caller's input. The app is FastAPI, mounted into the BentoML service, so BentoML's /docs.json,
/livez, /readyz and /metrics cover it. Order of the checks for a POST: the API key
(`middleware.Front`, outside BentoML's whole app, before anything is read), then
`guards.BodyGuard` (media type, size, read deadline), then FastAPI's parsing against `schema`.
"""

# No `from __future__ import annotations` here: FastAPI reads the route's annotations at runtime,
# and the request body's model is a local of create_app that a string annotation cannot reach.
import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException
from starlette.responses import Response

from pipelines.serving import answers, feedback, routing, schema
from pipelines.serving.batcher import Overloaded
from pipelines.serving.guards import BodyGuard
from pipelines.serving.prediction_log import LogUnavailable
from pipelines.serving.registry_view import UNKNOWN, RegistryView
from pipelines.serving.responses import FastJSONResponse, error, foreign, outcome_of, validation_response
from pipelines.serving.worker import Worker, current_request_id

log = logging.getLogger("tabular_mlops.service")
PREDICT_PATH = "/predict"
FEEDBACK_PATH = "/feedback"


def served_status(status: dict[str, Any], served: str) -> dict[str, Any]:
    """The registry's view against the champion this worker serves now (it follows the registry)."""
    if status.get("champion_version") in (None, UNKNOWN):
        return status
    return {**status, "served_is_champion": status["champion_version"] == served}


async def serve_predict(worker: Worker, headers: list[tuple[bytes, bytes]], records: list[Any]) -> Response:
    """POST /predict once its body is valid: route, score, log, count and answer. Shared by the
    FastAPI route (documented in the OpenAPI schema) and `direct.DirectPredict` (what serves)."""
    started = time.perf_counter()
    rows = [r.model_dump() for r in records]
    # One snapshot of what serves for the whole request: a swap meanwhile does not touch it.
    serving = worker.serving
    key = None
    if serving.mode == "canary":
        key = routing.header_key(headers) or routing.field_key(rows, worker.routing_field)
    role, arm, shadow_arm = serving.route(key)
    try:
        predictions, probabilities = await arm.batcher.submit(rows)
    except Overloaded:
        worker.count("overloaded", role)
        return error(503, "overloaded", "too many rows are waiting; retry shortly", **{"Retry-After": "1"})
    except Exception:
        log.exception("prediction failed (%s v%s)", role, arm.version)
        worker.count("error", role)
        return error(500, "internal_error", "the service failed; the request id is in the logs")
    request_id = current_request_id()
    elapsed = time.perf_counter() - started
    latency_ms = elapsed * 1000
    if worker.monitor is not None:
        try:  # logged before counted: an answer that is not in the log is not an `ok`
            worker.monitor(request_id, arm.version, rows, predictions, probabilities, latency_ms, role)
        except LogUnavailable:
            worker.count("log_unavailable", role)
            return error(
                503,
                "log_unavailable",
                "the prediction log cannot be written; retry shortly",
                **{"Retry-After": "1"},
            )
    worker.count("ok", role)
    worker.records.inc(len(rows))
    worker.latency.observe(elapsed)
    if shadow_arm is not None:  # scored after this answer is sent, never returned
        worker.shadow.submit(shadow_arm, request_id, rows)
    answer = answers.response_body(request_id, arm.version, predictions, probabilities, role)
    # Built by us from plain values: FastAPI's re-validation against the response model
    # would cost more than the compiled model's call. The model still documents the schema.
    return FastJSONResponse(answer)


def request_body_model(meta: dict[str, Any]) -> Any:
    """The POST /predict body's model, from the packaged field specs and limits (both paths use it)."""
    limits = meta["limits"]
    record = schema.record_model(meta["fields"], meta.get("optional_fields", {}), limits["max_string_length"])
    return schema.request_model(record, limits["max_records"])


def create_app(meta: dict[str, Any], worker_ref: Callable[[], Worker]) -> Any:
    """The FastAPI app for one packaged model; `worker_ref` gives the worker's state once loaded."""
    limits = meta["limits"]
    body_model = request_body_model(meta)
    # Only documents the key in the OpenAPI schema: middleware.Front checks it, before the body.
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
    registry = RegistryView.for_meta(meta)
    app = FastAPI(title="tabular-mlops", docs_url=None, redoc_url=None, openapi_url=None)

    def count(outcome: str) -> None:
        worker_ref().count(outcome)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        response = validation_response(exc)
        count("malformed" if response.status_code == 400 else "invalid")
        return response

    @app.exception_handler(HTTPException)
    async def refused(_: Request, exc: HTTPException) -> JSONResponse:
        """FastAPI's own refusals (`{"detail": ...}`): a body that is not a `JSONDecodeError` to
        parse (deep nesting, huge integers, invalid UTF-8), 404, 405, in the project's shape."""
        kind, message = foreign(exc.status_code)
        count(outcome_of(kind))
        return error(exc.status_code, kind, message, **(exc.headers or {}))

    @app.exception_handler(Exception)
    async def failed(_: Request, exc: Exception) -> JSONResponse:
        log.exception("prediction failed")
        count("error")
        return error(500, "internal_error", "the service failed; the request id is in the logs")

    error_doc = {"description": "refused: the body names the field and the problem"}

    @app.post(
        PREDICT_PATH,
        response_model=answers.PredictResponse,
        response_model_exclude_none=True,
        dependencies=[Depends(bearer)],
        responses={code: error_doc for code in (400, 401, 408, 413, 415, 422)}
        | {
            503: {
                "description": "overloaded, or the prediction log cannot be written; retry after Retry-After seconds"
            }
        },
        summary="Predict for 1..N records given in the raw data's column names",
    )
    async def predict(request: Request, body: body_model) -> Any:  # type: ignore[valid-type]
        return await serve_predict(worker_ref(), request.scope["headers"], body.records)

    feedback_body = feedback.request_model(limits["max_records"])
    labels_log: list[feedback.FeedbackLog] = []  # made in the worker, at its first labels

    @app.post(
        FEEDBACK_PATH,
        dependencies=[Depends(bearer)],
        responses={code: error_doc for code in (400, 401, 408, 413, 415, 422)}
        | {503: {"description": "the labels could not be written; retry after Retry-After seconds"}},
        summary="Ground-truth labels for answered records, by request_id and record index",
    )
    async def take_feedback(body: feedback_body) -> Any:  # type: ignore[valid-type]
        loaded = worker_ref().loaded
        if not labels_log:
            labels_log.append(feedback.FeedbackLog(feedback.log_dir(os.environ), feedback.service_writer()))
        target = feedback.Target.of(loaded.task, loaded.classes, limits["max_records"])
        try:
            accepted = await feedback.accept(target, labels_log[0], [i.model_dump() for i in body.labels])
        except feedback.InvalidLabel as exc:
            count("invalid")
            return error(422, "invalid_request", exc.problem, field=exc.field)
        except feedback.FeedbackUnavailable:
            log.exception("labels not written")
            count("feedback_unavailable")
            return error(
                503,
                "feedback_unavailable",
                "the labels cannot be written; retry shortly",
                **{"Retry-After": "1"},
            )
        count("feedback_accepted")
        return {"accepted": accepted}

    @app.post("/empty", include_in_schema=False)
    async def empty() -> JSONResponse:
        """Does nothing: its latency is this service's HTTP floor (bench/serve.py measures it)."""
        return JSONResponse({})

    @app.get("/metadata", dependencies=[Depends(bearer)], responses={401: error_doc})
    async def metadata() -> dict[str, Any]:
        """The served champion's version, lineage tags and metrics; whether it is still the
        registry's champion; the roles this worker serves (champion, challenger, rollout mode) and
        why it serves anything other than what the registry asks; whether the service asks for a key."""
        worker = worker_ref()
        loaded = worker.loaded
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
            "registry": served_status(await asyncio.to_thread(registry.status), loaded.version),
            "serving": worker.follower.status(),
            "auth": worker.keys.mode,
        }

    app.add_middleware(
        BodyGuard, max_bytes=limits["max_body_bytes"], count=count, deadline=limits["body_timeout_seconds"]
    )
    return app
