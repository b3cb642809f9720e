"""One BentoML worker's state: the models it serves (following the registry), its keys, metrics,
shadow queue and prediction log."""

from __future__ import annotations

import uuid

from pipelines.serving.auth import ApiKeys
from pipelines.serving.bundle import LoadedModel
from pipelines.serving.follower import Follower, Serving
from pipelines.serving.prediction_log import PredictionLog
from pipelines.serving.routing import CHALLENGER
from pipelines.serving.shadow import ROLE as SHADOW
from pipelines.serving.shadow import Shadow


class Worker:
    """One worker's models (`follower.serving`: champion, and during a rollout the challenger),
    keys, metrics, shadow queue and prediction log (`monitor`)."""

    def __init__(
        self,
        follower: Follower,
        keys: ApiKeys,
        monitor: PredictionLog | None = None,
        routing_field: str | None = None,
    ) -> None:
        # Imported here, in the worker: BentoML sets PROMETHEUS_MULTIPROC_DIR after importing the service.
        import prometheus_client

        self.follower = follower
        self.keys = keys
        self.monitor = monitor
        self.routing_field = routing_field
        limits = follower.serving.champion.loaded.meta["limits"]
        self.shadow = Shadow(monitor, lambda kind: self.count(kind, SHADOW), limits["max_queue_rows"])
        self.by_role = prometheus_client.Counter(
            "tabular_role_outcomes_total",
            "Outcomes per role: the arm that answered (champion, challenger) and shadow scoring",
            ["role", "outcome"],
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

    @property
    def serving(self) -> Serving:
        return self.follower.serving

    @property
    def loaded(self) -> LoadedModel:
        """The champion as served now (what /metadata and /feedback describe)."""
        return self.follower.serving.champion.loaded

    def count(self, outcome: str, role: str | None = None) -> None:
        """One answer, by outcome (and by role once routed): in /metrics, and for refusals and
        failures also in the log folder (as counts, never inputs); the lines of an `ok` are the
        log itself. Shadow outcomes are not requests: counted for their role only."""
        if role != SHADOW:
            self.outcomes.labels(outcome=outcome).inc()
        if role is not None:
            self.by_role.labels(role=role, outcome=outcome).inc()
        if outcome != "ok" and self.monitor is not None:
            self.monitor.outcome(outcome, role, None if role == SHADOW else self.version_of(role))

    def version_of(self, role: str | None) -> str:
        """The model version a request of this role was answered or refused under: the
        challenger's for its arm, else the champion's (refusals before routing included)."""
        serving = self.follower.serving
        if role == CHALLENGER and serving.challenger is not None:
            return serving.challenger.version
        return serving.champion.version


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
