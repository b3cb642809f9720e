"""The service's HTTP face: strict parsing, API keys, body limit, load shedding, batching, logging.

Every refusal is a 4xx (or 503 when overloaded) with a JSON body that names the field and the
problem, never a stack trace and never the caller's input. The app is FastAPI, mounted into the
BentoML service, so BentoML's /docs.json, /livez, /readyz and /metrics cover it.
"""

import asyncio
import hmac
import logging
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic_core import to_json

from pipelines.serving import bundle

log = logging.getLogger("tabular_mlops.service")
PREDICT_PATH = "/predict"
DRAIN_LIMIT = 64 * 1024 * 1024


def error(status: int, kind: str, message: str, field: str | None = None, **headers: str) -> JSONResponse:
    body: dict[str, Any] = {"error": kind, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers or None)


class FastJSONResponse(JSONResponse):
    """JSON rendered by pydantic-core (Rust): ~4x faster than json.dumps for 1,000 records."""

    def render(self, content: Any) -> bytes:
        return to_json(content)


class Overloaded(Exception):
    """More rows are waiting for the model than the service accepts."""


class ApiKeys:
    """Bearer keys from API_KEY (comma-separated) or the file named by API_KEY_FILE (one per line)."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys if k]

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ApiKeys":
        env = dict(os.environ if env is None else env)
        if env.get("API_KEY_FILE"):
            return cls([line.strip() for line in Path(env["API_KEY_FILE"]).read_text().splitlines()])
        return cls([k.strip() for k in env.get("API_KEY", "").split(",")])

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def allows(self, token: str | None) -> bool:
        if not self._keys:
            return True
        given = (token or "").encode()
        # Compare with every key, in constant time, so timing reveals neither key nor match.
        matches = [hmac.compare_digest(given, key) for key in self._keys]
        return any(matches)


class Batcher:
    """Natural micro-batching: requests that arrive while the model is busy share its next call.

    No fixed wait: a lone request runs at once; under load, batches grow by themselves. Past
    `max_queue_rows` waiting rows, new requests are refused at once (load shedding). A fast model
    (`inline`, the compiled graph: ~0.05 ms a row) runs on the event loop, since a hop to a thread
    costs more than the call; a slow one runs in a thread so the loop keeps accepting requests.
    """

    def __init__(
        self, fn: Callable[[list[dict]], tuple[list, list | None]], max_queue_rows: int, inline: bool = False
    ) -> None:
        self.fn = fn
        self.max_queue_rows = max_queue_rows
        self.inline = inline
        self.pending_rows = 0
        self._queue: asyncio.Queue | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def submit(self, rows: list[dict]) -> tuple[list, list | None]:
        if self.pending_rows + len(rows) > self.max_queue_rows:
            raise Overloaded
        if self._queue is None:
            self._queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        self.pending_rows += len(rows)
        await self._queue.put((rows, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            if self.inline:
                # Let the requests that are ready submit first: under load they join this batch
                # (and count against max_queue_rows); alone, a request waits one loop turn.
                await asyncio.sleep(0)
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            rows = [row for items, _ in batch for row in items]
            try:
                if self.inline:
                    outcome = self.fn(rows)
                else:
                    outcome = await loop.run_in_executor(self._pool, self.fn, rows)
            except Exception as exc:
                outcome = exc
            finally:
                self.pending_rows -= len(rows)
            start = 0
            for items, future in batch:
                end = start + len(items)
                if future.done():  # its caller went away (disconnect, timeout)
                    pass
                elif isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    predictions, probabilities = outcome
                    future.set_result(
                        (predictions[start:end], probabilities[start:end] if probabilities else None)
                    )
                start = end


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
        body = b"".join(chunks)

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

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


def current_request_id() -> str:
    """BentoML's id of the request being served when it is traced (the id of its span and access log
    line), else a fresh one; the answer and the prediction log carry the same id either way."""
    try:
        from bentoml._internal.context import trace_context

        if trace_context.request_id is not None:
            return str(trace_context.request_id)
    except ImportError:  # outside BentoML (unit tests): any unique id will do
        pass
    return uuid.uuid4().hex


def _field(loc: tuple) -> str:
    """`records.0.tenure` from pydantic's location, without the `body` prefix."""
    return ".".join(str(part) for part in loc if part != "body")


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


class PredictionLog:
    """Append-only JSON lines, one per answered record, written before the answer is sent.

    One `write` per request to a file opened with O_APPEND, so a restart only ever appends and a
    record is never split; each worker has its own file. BentoML's monitoring API logged the same
    rows through one logging call per field (~110 ms per 1,000 records here), too slow for the
    batch path, so the log keeps its columns (request_id, timestamp, …) but not its machinery.
    """

    def __init__(self, directory: str | Path, worker: int | str = 0) -> None:
        self.path = Path(directory) / "predictions" / f"predictions.{worker}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(
        self,
        request_id: str,
        version: str,
        rows: list[dict],
        predictions: list,
        probabilities: list | None,
        latency_ms: float,
    ) -> None:
        from datetime import UTC, datetime

        stamp = datetime.now(UTC).isoformat()
        lines = []
        for index, (row, prediction) in enumerate(zip(rows, predictions, strict=True)):
            entry = {
                "request_id": request_id,
                "record": index,
                "timestamp": stamp,
                "model_version": version,
                "latency_ms": round(latency_ms, 3),
                **row,
                "prediction": prediction,
            }
            if probabilities is not None:
                entry.update({f"probability_{label}": p for label, p in probabilities[index].items()})
            lines.append(to_json(entry))
        os.write(self._fd, b"\n".join(lines) + b"\n")


class Engine:
    """One worker's models by role, batcher, keys, metrics and prediction log.

    `models` holds the champion; a shadow or canary challenger is one more entry beside it.
    """

    def __init__(self, loaded: bundle.LoadedModel, keys: ApiKeys, monitor: Callable | None = None) -> None:
        self.models = {"champion": loaded}
        # Imported here, in the worker: BentoML sets PROMETHEUS_MULTIPROC_DIR after importing the service.
        import prometheus_client

        self.loaded = loaded
        self.keys = keys
        self.monitor = monitor
        limits = {**bundle.DEFAULT_LIMITS, **loaded.meta.get("limits", {})}
        self.batcher = Batcher(
            lambda rows: bundle.answer(loaded, rows),
            limits["max_queue_rows"],
            inline=loaded.compiled is not None,
        )
        self.outcomes = prometheus_client.Counter(
            "tabular_predictions_total", "Prediction requests by outcome", ["outcome"]
        )
        self.records = prometheus_client.Counter("tabular_predicted_records_total", "Records answered")
        self.latency = prometheus_client.Histogram(
            "tabular_predict_latency_seconds",
            "Time from a valid request to its answer (queue and model)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )

    def count(self, outcome: str) -> None:
        self.outcomes.labels(outcome=outcome).inc()


def create_app(meta: dict[str, Any], engine_ref: Callable[[], Engine]) -> Any:
    """The FastAPI app for one packaged model; `engine_ref` gives the worker's loaded engine."""
    limits = {**bundle.DEFAULT_LIMITS, **meta.get("limits", {})}
    record = bundle.record_model(
        meta["fields"], meta.get("optional_fields", {}), limits["max_string_length"]
    )
    body_model = bundle.request_model(record, limits["max_records"])
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
    app = FastAPI(title="tabular-mlops", docs_url=None, redoc_url=None, openapi_url=None)

    def count(outcome: str) -> None:
        engine_ref().count(outcome)

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
        if not engine_ref().keys.allows(token):
            raise _Unauthorized

    @app.exception_handler(_Unauthorized)
    async def unauthorized(_: Request, __: Exception) -> JSONResponse:
        count("unauthorized")
        return error(401, "unauthorized", "a valid API key is required", **{"WWW-Authenticate": "Bearer"})

    error_doc = {"description": "refused: the body names the field and the problem"}

    @app.post(
        PREDICT_PATH,
        response_model=bundle.PredictResponse,
        response_model_exclude_none=True,
        dependencies=[Depends(authorized)],
        responses={code: error_doc for code in (400, 401, 413, 415, 422)}
        | {503: {"description": "overloaded; retry after Retry-After seconds"}},
        summary="Predict for 1..N records given in the raw data's column names",
    )
    async def predict(body: body_model) -> Any:  # type: ignore[valid-type]
        engine = engine_ref()
        started = time.perf_counter()
        rows = [r.model_dump() for r in body.records]
        try:
            predictions, probabilities = await engine.batcher.submit(rows)
        except Overloaded:
            return error(
                503, "overloaded", "too many rows are waiting; retry shortly", **{"Retry-After": "1"}
            )
        request_id = current_request_id()
        elapsed = time.perf_counter() - started
        latency_ms = elapsed * 1000
        engine.count("ok")
        engine.records.inc(len(rows))
        engine.latency.observe(elapsed)
        if engine.monitor is not None:
            engine.monitor(request_id, engine.loaded.version, rows, predictions, probabilities, latency_ms)
        answer = bundle.response_body(request_id, engine.loaded.version, predictions, probabilities)
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
        loaded = engine_ref().loaded
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
                "engine": loaded.engine,
                "compile_reason": compiled.get("reason"),
                "parity": compiled.get("parity"),
                "versions": compiled.get("versions"),
            },
        }

    app.add_middleware(BodyGuard, max_bytes=limits["max_body_bytes"], count=count)
    return app


class _Unauthorized(Exception):
    pass
