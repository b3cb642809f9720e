"""One BentoML worker's state: its model, batcher, keys, metrics and prediction log."""

from __future__ import annotations

import uuid

from pipelines.serving import answers
from pipelines.serving.auth import ApiKeys
from pipelines.serving.batcher import Batcher
from pipelines.serving.bundle import LoadedModel
from pipelines.serving.prediction_log import PredictionLog


class Worker:
    """One worker's loaded model, batcher, keys, metrics and prediction log (`monitor`)."""

    def __init__(self, loaded: LoadedModel, keys: ApiKeys, monitor: PredictionLog | None = None) -> None:
        # Imported here, in the worker: BentoML sets PROMETHEUS_MULTIPROC_DIR after importing the service.
        import prometheus_client

        self.loaded = loaded
        self.keys = keys
        self.monitor = monitor
        self.batcher = Batcher(
            lambda rows: answers.answer(loaded, rows),
            loaded.meta["limits"]["max_queue_rows"],
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
        """One answer, by outcome: in /metrics, and for refusals and failures also in the log
        folder (as counts, never inputs); the lines of an `ok` are the log itself."""
        self.outcomes.labels(outcome=outcome).inc()
        if outcome != "ok" and self.monitor is not None:
            self.monitor.outcome(outcome)


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
