"""The BentoML service: the champion model behind POST /predict.

All HTTP behaviour (schema, auth, limits, batching) lives in pipelines/http.py and all model
logic in the model's own scikit-learn Pipeline; this file wires them to BentoML. Models are kept
by role in the engine, so a shadow or canary challenger can be loaded beside the champion.
"""

from __future__ import annotations

import gc
import logging
import os

from threadpoolctl import threadpool_limits

import bentoml
from pipelines.serving import app
from pipelines.serving import bundle

log = logging.getLogger("tabular_mlops.service")
CHAMPION = bentoml.models.BentoModel(f"{serving.MODEL_NAME}:latest")
_engine: list[app.Engine] = []  # set once per worker, when the model is loaded
META = bundle.read_meta(CHAMPION.resolve().path)
app = app.create_app(META, lambda: _engine[0])


@bentoml.service(
    name="tabular-mlops",
    traffic={"timeout": 30, "max_concurrency": 512},
    **bundle.service_options(META),
)
@bentoml.asgi_app(app)
class Predictor:
    champion = CHAMPION

    def __init__(self) -> None:
        threadpool_limits(1)  # one thread per model call: OpenMP spinning costs more than it gains here
        keys = app.ApiKeys.from_env()
        if not keys.enabled:
            log.warning("!" * 72)
            log.warning("NO API KEY CONFIGURED: /predict is open to anyone. Set API_KEY or API_KEY_FILE.")
            log.warning("!" * 72)
        # The prediction log: $PREDICTION_LOG_DIR/predictions/predictions.<worker>.jsonl
        log_dir = os.environ.get("PREDICTION_LOG_DIR", "monitoring")
        worker = bentoml.server_context.worker_index or 0
        _engine.append(
            app.Engine(bundle.load(self.champion.path), keys, app.PredictionLog(log_dir, worker))
        )
        # Everything loaded so far lives as long as the worker: keep it out of the garbage
        # collector's full passes, which otherwise stall requests for tens of milliseconds.
        gc.collect()
        gc.freeze()
