"""The BentoML service: the champion model behind POST /predict.

All HTTP behaviour lives in pipelines/serving/ (routes in app.py; schema, runtimes, guards, batcher
and prediction log beside it) and all model logic in the model's own scikit-learn Pipeline; this
file only wires them to BentoML.
"""

from __future__ import annotations

import gc
import logging
import os

import bentoml
from threadpoolctl import threadpool_limits

from pipelines.serving import app, auth, bundle, prediction_log, worker

log = logging.getLogger("tabular_mlops.service")
CHAMPION = bentoml.models.BentoModel(f"{bundle.MODEL_NAME}:latest")
_worker: list[worker.Worker] = []  # set once per worker process, when the model is loaded
META = bundle.read_meta(CHAMPION.resolve().path)
asgi = app.create_app(META, lambda: _worker[0])


@bentoml.service(
    name="tabular-mlops",
    traffic={"timeout": 30, "max_concurrency": 512},
    **bundle.service_options(META),
)
@bentoml.asgi_app(asgi)
class Predictor:
    champion = CHAMPION

    def __init__(self) -> None:
        threadpool_limits(1)  # one thread per model call: OpenMP spinning costs more than it gains here
        keys = auth.ApiKeys.from_env()
        if not keys.enabled:
            log.warning("!" * 72)
            log.warning("NO API KEY CONFIGURED: /predict is open to anyone. Set API_KEY or API_KEY_FILE.")
            log.warning("!" * 72)
        # The prediction log: $PREDICTION_LOG_DIR/predictions/predictions.<worker>.jsonl
        log_dir = os.environ.get("PREDICTION_LOG_DIR", "monitoring")
        index = bentoml.server_context.worker_index or 0
        _worker.append(
            worker.Worker(bundle.load(self.champion.path), keys, prediction_log.PredictionLog(log_dir, index))
        )
        # Everything loaded so far lives as long as the worker: keep it out of the garbage
        # collector's full passes, which otherwise stall requests for tens of milliseconds.
        gc.collect()
        gc.freeze()
