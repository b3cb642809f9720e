"""pipelines/monitoring/operations.py: percentiles against numpy, buckets against prometheus_client
itself, and per-version figures from a log the real writer made, with hand-counted oracles."""

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import prometheus_client
import pytest

from pipelines.monitoring import logs, operations
from pipelines.serving import log_lines
from pipelines.serving.prediction_log import PredictionLog

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_percentiles_are_within_the_stated_error_of_numpy(seed):
    rng = np.random.default_rng(seed)
    latency = rng.lognormal(mean=1.5, sigma=1.0, size=20_000)  # ms: a long right tail
    bins = operations.latency_bins(latency[:7_000]) + operations.latency_bins(latency[7_000:])
    for q in (50, 95, 99):
        exact = np.percentile(latency, q, method="inverted_cdf")  # nearest rank
        assert operations.percentile(bins, q) == pytest.approx(exact, rel=operations.RELATIVE_ERROR)
    assert operations.RELATIVE_ERROR < 0.01
    assert operations.percentile(np.zeros(operations.BINS, dtype=np.int64), 50) is None


def test_bucket_counts_equal_prometheus_client_on_the_same_latencies():
    rng = np.random.default_rng(3)
    latency_ms = np.concatenate([rng.lognormal(1.0, 1.5, 5_000), [1.0, 2.5, 5.0, 1000.0, 9000.0]])
    registry = prometheus_client.CollectorRegistry()
    histogram = prometheus_client.Histogram("h", "h", buckets=operations.LATENCY_BUCKETS_S, registry=registry)
    for value in latency_ms:
        histogram.observe(value / 1000)
    expected = {
        sample.labels["le"]: sample.value
        for sample in next(iter(registry.collect())).samples
        if sample.name == "h_bucket"
    }
    ours = np.cumsum(operations.bucket_counts(latency_ms))
    bounds = [*(float(b) for b in operations.LATENCY_BUCKETS_S), float("inf")]
    assert {
        prometheus_client.utils.floatToGoString(b): float(n) for b, n in zip(bounds, ours, strict=True)
    } == expected


def test_buckets_are_the_services_own():
    """The service states its buckets in worker.py; both must change together."""
    tree = ast.parse((ROOT / "pipelines" / "serving" / "worker.py").read_text())
    found = [
        ast.literal_eval(keyword.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for keyword in node.keywords
        if keyword.arg == "buckets"
    ]
    assert found == [operations.LATENCY_BUCKETS_S]


def serve(tmp_path, monkeypatch):
    """Two workers, each serving one version, through the real writer at known times:
    worker 0 (version 1): 4 requests of 3 records at t0+0, +10, +70, +130 s, latencies 2, 4, 6, 8 ms;
    worker 1 (version 2): 2 requests of 1 record at t0+5 s, latencies 20, 30 ms.
    Refusals: worker 0 3 unauthorized and 1 error; worker 1 2 overloaded."""
    now = {"t": T0}

    class Fixed(datetime):
        @classmethod
        def now(cls, tz=None):
            return now["t"]

    monkeypatch.setattr(log_lines, "datetime", Fixed)
    w0 = PredictionLog(tmp_path, 0, {"fsync": "none"})
    w1 = PredictionLog(tmp_path, 1, {"fsync": "none"})
    for i, (second, latency) in enumerate([(0, 2.0), (10, 4.0), (70, 6.0), (130, 8.0)]):
        now["t"] = T0 + timedelta(seconds=second)
        w0(f"a{i}", "1", [{"x": k} for k in range(3)], [0, 1, 0], None, latency)
    for i, latency in enumerate([20.0, 30.0]):
        now["t"] = T0 + timedelta(seconds=5)
        w1(f"b{i}", "2", [{"x": 1}], [1], None, latency)
    for kind in ["unauthorized"] * 3 + ["error"]:
        w0.outcome(kind)
    w1.outcome("overloaded")
    w1.outcome("overloaded")
    w0.close()
    w1.close()
    return tmp_path


def test_figures_per_version_from_a_real_log(tmp_path, monkeypatch):
    root = serve(tmp_path, monkeypatch)
    traffic = operations.traffic_of(
        logs.iter_frames(root, block_bytes=512, only=operations.LOG_FIELDS)
    )  # requests cross frames
    outcomes = logs.read_outcomes(root)
    # The outcome windows are written on the real clock (now), not the fake one: move them to the
    # traffic's time, as a service running at t0 would have written them.
    outcomes["window_start"] = pd.Timestamp(T0)
    figures = operations.operations(traffic, outcomes)
    v1, v2 = figures["1"], figures["2"]
    assert (v1["requests"], v1["records"], v2["requests"], v2["records"]) == (4, 12, 2, 2)
    assert v1["latency_ms"]["p50"] == pytest.approx(4.0, rel=operations.RELATIVE_ERROR)
    assert v1["latency_ms"]["p99"] == pytest.approx(8.0, rel=operations.RELATIVE_ERROR)
    assert v2["latency_ms"]["p95"] == pytest.approx(30.0, rel=operations.RELATIVE_ERROR)
    assert v1["latency_buckets"] == {
        "0.001": 0, "0.0025": 1, "0.005": 2, "0.01": 4, "0.025": 4, "0.05": 4, "0.1": 4,
        "0.25": 4, "0.5": 4, "1.0": 4, "2.5": 4, "5.0": 4, "+Inf": 4,
    }  # fmt: skip
    # Minutes 12:00, 12:01, 12:02: requests 2, 1, 1 (records 6, 3, 3).
    assert v1["requests_per_minute"] == {"mean": 4 / 3, "peak": 2.0}
    assert v1["records_per_minute"] == {"mean": 12 / 3, "peak": 6.0}
    assert v1["outcomes"] == {"ok": 4, "unauthorized": 3, "error": 1}
    assert v1["error_rate"] == 1 / 8 and v1["refusal_rate"] == 3 / 8 and v1["shed_rate"] == 0
    assert v2["outcomes"] == {"ok": 2, "overloaded": 2}
    assert v2["shed_rate"] == 2 / 4 and v2["error_rate"] == 0 and v2["refusal_rate"] == 0


def test_outcomes_no_version_can_claim_are_unattributed():
    traffic = {
        "1": operations.VersionTraffic(spans={"0": [pd.Timestamp(T0), pd.Timestamp(T0 + timedelta(minutes=5))]}),
        "2": operations.VersionTraffic(spans={"0": [pd.Timestamp(T0 + timedelta(minutes=9)), pd.Timestamp(T0 + timedelta(minutes=20))]}),
        "3": operations.VersionTraffic(spans={"7": [pd.Timestamp(T0), pd.Timestamp(T0)]}),
    }  # fmt: skip
    outcomes = pd.DataFrame(
        {
            "worker": ["0", "0", "0", "7", "9"],
            "window_start": [pd.Timestamp(T0 + timedelta(minutes=m)) for m in (1, 10, 6, 50, 1)],
            "window_s": 60.0,
        }
    )
    # minute 1 -> v1; minute 10 -> v2; minute 6 falls between v1 and v2 on worker 0 -> unattributed;
    # worker 7 only ever served v3; worker 9 logged nothing.
    assert list(operations.attribute(outcomes, traffic)) == ["1", "2", "unattributed", "3", "unattributed"]


def test_rates_with_no_requests_are_none():
    assert operations.outcome_rates({}) == {"error_rate": None, "shed_rate": None, "refusal_rate": None}


def test_feedback_outcomes_are_not_prediction_requests():
    counts = {"ok": 90, "invalid": 6, "error": 4, "feedback_accepted": 500, "feedback_unavailable": 7}
    assert operations.outcome_rates(counts) == {"error_rate": 0.04, "shed_rate": 0.0, "refusal_rate": 0.06}


def test_an_outcome_line_that_names_its_version_needs_no_span():
    # Worker 9 only refused requests, so it logged no answers and has no span; worker 0 served v1
    # then v2, and its line at minute 6 (between the spans) names v2.
    traffic = {
        "1": operations.VersionTraffic(spans={"0": [pd.Timestamp(T0), pd.Timestamp(T0 + timedelta(minutes=5))]}),
        "2": operations.VersionTraffic(spans={"0": [pd.Timestamp(T0 + timedelta(minutes=9)), pd.Timestamp(T0 + timedelta(minutes=20))]}),
    }  # fmt: skip
    outcomes = pd.DataFrame(
        {
            "worker": ["9", "0", "0"],
            "window_start": [pd.Timestamp(T0 + timedelta(minutes=m)) for m in (1, 6, 6)],
            "window_s": 60.0,
            "version": ["1", "2", None],
            "outcome": ["unauthorized", "overloaded", "error"],
            "count": [4, 2, 1],
        }
    )
    assert list(operations.attribute(outcomes, traffic)) == ["1", "2", "unattributed"]
    figures = operations.operations(traffic, outcomes)
    assert figures["1"]["outcomes"] == {"unauthorized": 4}
    assert figures["2"]["outcomes"] == {"overloaded": 2}
    assert figures["unattributed"]["outcomes"] == {"error": 1}
