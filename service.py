"""The BentoML service: the champion model behind POST /predict.

All HTTP behaviour (schema, auth, limits, batching) lives in pipelines/http.py and all model
logic in the model's own scikit-learn Pipeline; this file wires them to BentoML. Models are kept
by role in the engine, so a shadow or canary challenger can be loaded beside the champion.
"""

from __future__ import annotations

import logging
import os

from threadpoolctl import threadpool_limits

import bentoml
from pipelines import http, serving

log = logging.getLogger("tabular_mlops.service")
CHAMPION = bentoml.models.BentoModel(f"{serving.MODEL_NAME}:latest")
_engine: list[http.Engine] = []  # set once per worker, when the model is loaded
app = http.create_app(serving.read_meta(CHAMPION.resolve().path), lambda: _engine[0])


def log_predictions(request_id, version, rows, predictions, probabilities, latency_ms) -> None:
    """One prediction-log row per answered record, through BentoML's monitoring API."""
    for index, (row, prediction) in enumerate(zip(rows, predictions, strict=True)):
        with bentoml.monitor("predictions") as mon:
            mon.log(request_id, name="request_id", role="request", data_type="categorical")
            mon.log(index, name="record", role="request", data_type="numerical")
            mon.log(version, name="model_version", role="model", data_type="categorical")
            mon.log(round(latency_ms, 3), name="latency_ms", role="request", data_type="numerical")
            for name, value in row.items():
                mon.log(
                    value,
                    name=name,
                    role="feature",
                    data_type="numerical" if isinstance(value, int | float) else "categorical",
                )
            mon.log(prediction, name="prediction", role="prediction", data_type="categorical")
            if probabilities is not None:
                for label, p in probabilities[index].items():
                    mon.log(p, name=f"probability_{label}", role="prediction", data_type="numerical")


@bentoml.service(
    name="tabular-mlops",
    traffic={"timeout": 30, "max_concurrency": 512},
    # The prediction log: <dir>/predictions/data/data.<worker>.log, one JSON line per record.
    monitoring={"enabled": True, "type": "default", "options": {"log_path": os.environ.get("PREDICTION_LOG_DIR", "monitoring")}},
)
@bentoml.asgi_app(app)
class Predictor:
    champion = CHAMPION

    def __init__(self) -> None:
        threadpool_limits(1)  # one thread per model call: OpenMP spinning costs more than it gains here
        keys = http.ApiKeys.from_env()
        if not keys.enabled:
            log.warning("!" * 72)
            log.warning("NO API KEY CONFIGURED: /predict is open to anyone. Set API_KEY or API_KEY_FILE.")
            log.warning("!" * 72)
        _engine.append(http.Engine(serving.load(self.champion.path), keys, log_predictions))
