"""The BentoML service: the registry's champion (and, during a rollout, its challenger) behind POST /predict.

All HTTP behaviour lives in pipelines/serving/ (routes in app.py; the outermost layer in
middleware.py; schema, runtimes, guards, batcher and prediction log beside them) and all model
logic in the model's own scikit-learn Pipeline; this file only wires them to BentoML.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import bentoml
from threadpoolctl import threadpool_limits

from pipelines.serving import (
    affinity,
    app,
    auth,
    bundle,
    direct,
    follower,
    middleware,
    prediction_log,
    registry_view,
    worker,
)

CHAMPION = bentoml.models.BentoModel(f"{bundle.MODEL_NAME}:latest")
_worker: list[worker.Worker] = []  # set once per worker process, when the model is loaded
_keys: list[auth.ApiKeys] = []  # set once per worker process, when its ASGI app is built
META = bundle.read_meta(CHAMPION.resolve().path)
# Used while a packaged model carries no `serving.max_requests_per_connection` (params.yaml).
MAX_REQUESTS_PER_CONNECTION = 100


def max_requests_per_connection() -> int:
    """Requests after which a keep-alive connection is closed (middleware.Recycler; 0: never):
    $MAX_REQUESTS_PER_CONNECTION if set (bench/serve.py --compare), else the packaged setting."""
    value = os.environ.get("MAX_REQUESTS_PER_CONNECTION") or (META.get("service") or {}).get(
        "max_requests_per_connection", MAX_REQUESTS_PER_CONNECTION
    )
    if not str(value).isdigit():
        raise ValueError(f"max_requests_per_connection must be a whole number >= 0, not {value!r}")
    return int(value)


asgi = app.create_app(META, lambda: _worker[0])


def count(outcome: str) -> None:
    """Count an answer given outside the FastAPI app (refused in front, or by BentoML)."""
    if _worker:  # requests are served only once the model is loaded, but fail safe
        _worker[0].count(outcome)


class FrontedService(bentoml.Service):
    """BentoML's service, with `middleware.Front` around its whole ASGI app (see there why:
    `add_asgi_middleware` would sit inside BentoML's metrics, timeout and concurrency layers)."""

    def to_asgi(self, is_main: bool = True) -> Any:
        inner = super().to_asgi(is_main)
        if os.environ.get("BENTOML_TIMEOUT_TASK") != "1":  # 1: BentoML's own (bench/serve.py --compare)
            inner = middleware.with_deadline(inner)
        _keys.append(auth.ApiKeys.from_env())
        # Keep-alive connections recycled after about this many requests, so that they spread
        # over the workers that share the listening socket (middleware.Recycler).
        recycler = middleware.Recycler(max_requests_per_connection())
        routes = middleware.known_routes(inner)
        # ONE_WRITE=0: uvicorn's two writes per answer (bench/serve.py --compare ONE_WRITE=0,1).
        coalesce = os.environ.get("ONE_WRITE", "1") != "0"
        return middleware.Front(inner, _keys[0], routes, count, recycler, coalesce)


@bentoml.service(
    name="tabular-mlops",
    traffic={"timeout": 30, "max_concurrency": 512},
    # Used by `bentoml serve --ssl-certfile/--ssl-keyfile`; `--ssl-ciphers` still overrides it.
    ssl={"ciphers": META["service"]["tls_ciphers"]},
    service_class=FrontedService,
    **bundle.service_options(META),
)
@bentoml.asgi_app(asgi)
class Predictor:
    champion = CHAMPION

    @bentoml.on_deployment
    def check_keys() -> None:
        """Once, in `bentoml serve`'s own process before any worker starts: key settings that
        give no usable key, or a bad MAX_REQUESTS_PER_CONNECTION or PIN_WORKERS, refuse to start, with one line
        (a worker would only be respawned)."""
        try:
            auth.ApiKeys.from_env()
            max_requests_per_connection()
            affinity.setting(META["service"], os.environ)
        except (auth.KeyConfigError, ValueError) as exc:
            raise SystemExit(f"ERROR serve: {exc}") from None

    def __init__(self) -> None:
        # First, so that every thread started from here on (model runtimes, log, follower)
        # inherits the worker's core (pipelines/serving/affinity.py says why).
        affinity.pin_worker(
            bentoml.server_context.worker_index,
            int(META["service"].get("workers", 1)),
            affinity.setting(META["service"], os.environ),
        )
        threadpool_limits(1)  # one thread per model call: OpenMP spinning costs more than it gains here
        # The prediction log: $PREDICTION_LOG_DIR/predictions/predictions.<worker>.jsonl
        log_dir = os.environ.get("PREDICTION_LOG_DIR", "monitoring")
        index = bentoml.server_context.worker_index or 0
        log = prediction_log.PredictionLog(log_dir, index, META["service"].get("prediction_log"))
        # The worker follows the registry's roles (champion, challenger, rollout) from now on,
        # swapping packaged models in without a restart (pipelines/serving/follower.py).
        rollout = META.get("rollout") or {}
        uri, name = registry_view.tracking_uri(META, os.environ), str(META["registered_model"])
        follows = follower.Follower(
            bundle.load(self.champion.path),
            Path(self.champion.path).parents[1],  # the model store (a bento's own, when serving one)
            lambda: registry_view.read_roles(uri, name, os.environ),
            float(rollout.get("poll_seconds") or follower.DEFAULT_POLL_SECONDS),
        )
        follows.sync()  # before the first request: a registry that moved since packaging is followed now
        follows.start()
        _worker.append(worker.Worker(follows, _keys[0], log, rollout.get("routing_field")))
        # Everything loaded so far lives as long as the worker: keep it out of the garbage
        # collector's full passes, which otherwise stall requests for tens of milliseconds.
        gc.collect()
        gc.freeze()

    @bentoml.on_shutdown
    async def close_log(self) -> None:
        """Stop following the registry, score the queued shadow work, then flush the outcome
        counts and close the prediction log when the worker stops."""
        if _worker:
            _worker[0].follower.stop()
            await _worker[0].shadow.drain()
            if _worker[0].monitor is not None:
                _worker[0].monitor.close()

    async def __is_ready__(self) -> bool:
        """BentoML's /readyz: unready while the prediction log cannot be written."""
        return bool(_worker) and _worker[0].monitor.healthy


# POST /predict is answered inside BentoML's middleware (metrics, tracing, timeout, concurrency),
# before the mounted FastAPI app's routing (pipelines/serving/direct.py says why); DIRECT_PREDICT=0
# sends it through the FastAPI route instead (bench/serve.py --compare DIRECT_PREDICT=0,1).
if os.environ.get("DIRECT_PREDICT", "1") != "0":
    Predictor.add_asgi_middleware(
        direct.DirectPredict, endpoint=direct.predict_endpoint(META, lambda: _worker[0])
    )
