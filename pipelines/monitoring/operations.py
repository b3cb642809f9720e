"""Operations figures from the prediction log and the outcome counts, per model version.

Latency, percentiles and throughput are per *request*, as the service's /metrics counts them: a
request is its `record == 0` line (every record of a request carries the request's latency), so
requests are counted exactly even when a request's lines fall in two frames.

Percentiles come from a fixed log-spaced histogram (`GROWTH` per bin), not from a reservoir:
memory is a few thousand counters whatever the log's size, histograms of frames, workers and
versions add exactly, the figures are deterministic, and the error is bounded: a reported
percentile is within `RELATIVE_ERROR` (1 %) of the exact nearest-rank value (numpy's
`method="inverted_cdf"`). A reservoir's error depends on the sample, and grows at p99.

Beside them, `latency_buckets` counts requests in the service's own histogram buckets (`le`, in
seconds, cumulative), and `outcomes` holds the outcome counts of `tabular_predictions_total`: over
the same replay they equal /metrics exactly (the outcome names are the service's own, written by
the same call that counts them). The log holds the latency /metrics observed, unrounded (in
ms, where /metrics has seconds: only a value within a float's last digit of a bucket bound could
fall on the other side). One limit: the
current outcome window of a running worker is written only when the next one starts. Over longer
spans they differ by design: /metrics restarts from zero with each service start, and the log
loses its oldest rotated files beyond `serving.prediction_log.keep`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

# tabular_predict_latency_seconds' buckets (pipelines/serving/worker.py); a test checks they agree.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
GROWTH = 1.02  # each percentile bin is 2 % wider than the last
MIN_MS = 1e-3  # 1 µs: smaller latencies share bin 0
BINS = math.ceil(math.log(1e9) / math.log(GROWTH))  # 1 µs .. 1,000 s, beyond which bins clip
RELATIVE_ERROR = math.sqrt(GROWTH) - 1  # the bin's geometric middle is this close to any value in it
# Outcomes that are the service's failures, and load it shed; every other non-ok is a refusal
# of the caller's request (unauthorized, malformed, invalid, body_too_large, …).
ERRORS = frozenset({"error", "log_unavailable", "not_ready", "unavailable"})
SHED = frozenset({"overloaded", "too_many_requests"})
FEEDBACK_PREFIX = "feedback_"  # outcomes of POST /feedback (pipelines/serving/app.py)
UNATTRIBUTED = "unattributed"
LOG_FIELDS: tuple[str, ...] = ()  # logs.iter_frames(only=...): the fixed fields are all this needs


@dataclass
class VersionTraffic:
    """One model version's answered traffic, added up frame by frame."""

    requests: int = 0
    records: int = 0
    bins: np.ndarray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))
    buckets: np.ndarray = field(default_factory=lambda: np.zeros(len(LATENCY_BUCKETS_S) + 1, dtype=np.int64))
    requests_by_minute: Counter = field(default_factory=Counter)
    records_by_minute: Counter = field(default_factory=Counter)
    # (worker -> [first, last] timestamp): attributes that worker's outcome windows to this version.
    spans: dict[str, list[pd.Timestamp]] = field(default_factory=dict)


def latency_bins(latency_ms: np.ndarray) -> np.ndarray:
    """Counts per log-spaced bin: bin i holds [MIN_MS·GROWTH^i, MIN_MS·GROWTH^(i+1))."""
    scaled = np.maximum(latency_ms, MIN_MS) / MIN_MS
    index = np.clip(np.floor(np.log(scaled) / math.log(GROWTH)).astype(np.int64), 0, BINS - 1)
    return np.bincount(index, minlength=BINS)


def bucket_counts(latency_ms: np.ndarray) -> np.ndarray:
    """Counts per Prometheus bucket (non-cumulative; the last is +Inf): `value <= le`, as prometheus_client."""
    index = np.searchsorted(np.asarray(LATENCY_BUCKETS_S) * 1000.0, latency_ms, side="left")
    return np.bincount(index, minlength=len(LATENCY_BUCKETS_S) + 1)


def percentile(bins: np.ndarray, q: float) -> float | None:
    """The q-th percentile (0-100, nearest rank) of the values binned, within RELATIVE_ERROR."""
    total = int(bins.sum())
    if total == 0:
        return None
    rank = max(math.ceil(q / 100 * total), 1)
    index = int(np.searchsorted(np.cumsum(bins), rank, side="left"))
    return MIN_MS * GROWTH ** (index + 0.5)


def add_frame(traffic: dict[str, VersionTraffic], frame: pd.DataFrame) -> None:
    """Adds one frame of the log (logs.iter_frames) to the per-version totals."""
    for version, rows in frame.groupby("model_version", sort=False):
        stats = traffic.setdefault(str(version), VersionTraffic())
        minutes = rows["timestamp"].dt.floor("min")
        stats.records += len(rows)
        stats.records_by_minute.update(minutes.value_counts().to_dict())
        first = rows["record"].to_numpy() == 0
        latency = rows["latency_ms"].to_numpy()[first]
        stats.requests += int(first.sum())
        stats.requests_by_minute.update(minutes[first].value_counts().to_dict())
        stats.bins += latency_bins(latency)
        stats.buckets += bucket_counts(latency)
        for worker, times in rows.groupby("worker", sort=False)["timestamp"]:
            span = stats.spans.setdefault(str(worker), [times.min(), times.max()])
            span[0], span[1] = min(span[0], times.min()), max(span[1], times.max())


def traffic_of(frames: Iterable[pd.DataFrame]) -> dict[str, VersionTraffic]:
    traffic: dict[str, VersionTraffic] = {}
    for frame in frames:
        add_frame(traffic, frame)
    return traffic


def attribute(outcomes: pd.DataFrame, traffic: dict[str, VersionTraffic]) -> pd.Series:
    """The model version of each outcome row: the version the line names (the service counts each
    request under the version that answered or refused it). Lines written before they named one:
    the one version whose logged span on that worker overlaps the row's window (or the worker's
    only version ever); else `unattributed`."""
    named = outcomes["version"] if "version" in outcomes else pd.Series(None, index=outcomes.index)
    versions = []
    for worker, start, width, version in zip(
        outcomes["worker"], outcomes["window_start"], outcomes["window_s"], named, strict=True
    ):
        if isinstance(version, str):
            versions.append(version)
            continue
        end = start + pd.Timedelta(seconds=width)
        on_worker = {v: t.spans[worker] for v, t in traffic.items() if worker in t.spans}
        overlapping = [v for v, (first, last) in on_worker.items() if first < end and last >= start]
        candidates = overlapping or (list(on_worker) if len(on_worker) == 1 else [])
        versions.append(candidates[0] if len(candidates) == 1 else UNATTRIBUTED)
    return pd.Series(versions, index=outcomes.index, dtype="object")


def outcome_rates(counts: dict[str, int]) -> dict[str, float | None]:
    """error, shed and refusal rates over every request counted (the /metrics denominator)."""
    # POST /feedback's outcomes (feedback_accepted, feedback_unavailable) are another endpoint's
    # requests, not predictions: they count in neither the numerator nor the denominator.
    counts = {kind: n for kind, n in counts.items() if not kind.startswith(FEEDBACK_PREFIX)}
    total = sum(counts.values())
    if total == 0:
        return {"error_rate": None, "shed_rate": None, "refusal_rate": None}
    errors = sum(n for kind, n in counts.items() if kind in ERRORS)
    shed = sum(n for kind, n in counts.items() if kind in SHED)
    refused = total - errors - shed - counts.get("ok", 0)
    return {"error_rate": errors / total, "shed_rate": shed / total, "refusal_rate": refused / total}


def throughput(by_minute: Counter) -> dict[str, float]:
    """Mean per minute over the span from the first to the last minute (quiet minutes count as 0),
    and the busiest minute."""
    if not by_minute:
        return {"mean": 0.0, "peak": 0.0}
    minutes = (max(by_minute) - min(by_minute)) / pd.Timedelta(minutes=1) + 1
    return {"mean": sum(by_minute.values()) / minutes, "peak": float(max(by_minute.values()))}


def version_figures(stats: VersionTraffic, counts: dict[str, int]) -> dict[str, Any]:
    cumulative = np.cumsum(stats.buckets)
    bounds = [*(str(b) for b in LATENCY_BUCKETS_S), "+Inf"]
    return {
        "requests": stats.requests,
        "records": stats.records,
        "latency_ms": {f"p{q}": percentile(stats.bins, q) for q in (50, 95, 99)},
        "latency_buckets": dict(zip(bounds, (int(n) for n in cumulative), strict=True)),
        "requests_per_minute": throughput(stats.requests_by_minute),
        "records_per_minute": throughput(stats.records_by_minute),
        "outcomes": counts,
        **outcome_rates(counts),
    }


def operations(traffic: dict[str, VersionTraffic], outcomes: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per model version: latency percentiles and buckets, throughput, outcome counts and rates.
    Outcome rows that fit no single version are reported under `unattributed`."""
    versions = attribute(outcomes, traffic) if len(outcomes) else pd.Series(dtype="object")
    counts: dict[str, dict[str, int]] = {}
    for (version, kind), n in outcomes.groupby([versions, outcomes["outcome"]])["count"].sum().items():
        counts.setdefault(str(version), {})[str(kind)] = int(n)
    figures = {v: version_figures(stats, counts.pop(v, {})) for v, stats in sorted(traffic.items())}
    for version, rest in counts.items():
        figures[version] = {"outcomes": rest, **outcome_rates(rest)}
    return figures


def between(outcomes: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """The outcome windows that overlap [start, end]: the monitor's window, as counts."""
    ends = outcomes["window_start"] + pd.to_timedelta(outcomes["window_s"], unit="s")
    return outcomes[(ends > start) & (outcomes["window_start"] <= end)]
