"""The monitor (pipelines/monitoring/monitor.py) over a log with shadow lines: they are the other
arm's answers, never returned, so its traffic, drift, quality, operations and live performance
must be exactly those of the same log without them. The log is written by the service's own
writer (PredictionLog, role="shadow"); the oracle is the monitor's report on the log without them."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers.support import PROJECT, read_yaml

from pipelines.monitoring import logs, monitor, references
from pipelines.monitoring.reference import build_reference
from pipelines.serving.prediction_log import PredictionLog

FIELDS = {"x": {"type": "number", "nullable": False}}


def population(n, seed, shift=0.0):
    return pd.DataFrame({"x": np.random.default_rng(seed).normal(shift, 1.0, n)})


def served(version):
    train = population(3000, 0)
    p = pd.Series(1 / (1 + np.exp(-train["x"].to_numpy())), index=train.index)
    reference = build_reference(
        train, p, "numeric", fields=FIELDS, model_version=version, sample_size=2000, bins=10, seed=1
    )
    reference["prediction_form"] = {"form": "probability", "class": "yes"}
    return references.Served(version, reference, "bentoml", "classification", {"roc_auc": 0.8})


def write(root, frame, shadow, worker=0):
    """The champion v1 answers every request; with `shadow`, challenger v2 (drifted, slow, wrong)
    scores each one too."""
    log = PredictionLog(root, worker, {"fsync": "none"})
    p = 1 / (1 + np.exp(-frame["x"].to_numpy()))
    rows = frame.to_dict("records")
    for i in range(0, len(rows), 10):
        part = slice(i, i + 10)
        answers = [{"no": float(1 - q), "yes": float(q)} for q in p[part]]
        log(f"req-{i}", "1", rows[part], ["yes" if q >= 0.5 else "no" for q in p[part]], answers, 1.5)
        if shadow:
            moved = [{**r, "x": r["x"] + 5} for r in rows[part]]
            flipped = [{"no": a["yes"], "yes": a["no"]} for a in answers]
            log(f"req-{i}", "2", moved, ["no"] * len(moved), flipped, 900.0, role="shadow")
    log.close()


@pytest.fixture
def lookup(monkeypatch):
    known = {"1": served("1"), "2": served("2")}
    monkeypatch.setattr(
        monitor, "find_served", lambda root, params, versions: {v: known[v] for v in versions}
    )


def labelled(root, n):
    (root / "feedback").mkdir()
    with open(root / "feedback" / "labels.t.jsonl", "w") as out:
        for i in range(n):
            entry = {"request_id": f"req-{i // 10 * 10}", "record": i % 10, "label": "yes" if i % 3 else "no"}
            out.write(
                json.dumps({**entry, "source": "bulk", "received_at": "2026-12-01T00:00:00+00:00"}) + "\n"
            )


def test_the_monitor_ignores_shadow_lines(tmp_path, lookup):
    params = read_yaml(PROJECT / "params.yaml")
    frame = population(600, 3)
    with_shadow, without = tmp_path / "with", tmp_path / "without"
    for root, shadow in ((with_shadow, True), (without, False)):
        write(root, frame, shadow)
        labelled(root, 600)
    roles = pd.concat(logs.iter_frames(with_shadow))["role"].value_counts().to_dict()
    assert roles == {"champion": 600, "shadow": 600}  # the shadow lines are there to be ignored
    got, want = (monitor.run(tmp_path, params, root) for root in (with_shadow, without))
    assert got["window"]["versions"] == {"1": 600} and got["window"]["requests"] == 60
    for section in ("status", "drift", "quality", "operations", "performance"):
        assert got[section] == want[section], section
    unnamed = [[{k: v for k, v in a.items() if k != "id"} for a in r["alerts"]] for r in (got, want)]
    assert unnamed[0] == unnamed[1]  # an alert's id hashes the window's times, which differ
    assert got["performance"]["versions"]["1"]["labelled"] == 600
