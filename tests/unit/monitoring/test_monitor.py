"""pipelines/monitoring/monitor.py and command.py: the monitor's own logic over a log the real
writer made. The references are built here from known frames (the store lookup is replaced: it is
tested against real stores in tests/integration/test_monitor_versions.py), and the expected verdicts
come from how the test made the traffic, not from the rule's code."""

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.support import PROJECT, read_yaml

from pipelines.core.errors import ParamsError
from pipelines.monitoring import command, monitor, references
from pipelines.monitoring.reference import build_reference
from pipelines.serving.prediction_log import PredictionLog

FIELDS = {
    "x": {"type": "number", "nullable": False},
    "color": {"type": "string", "nullable": False, "allowed": ["red", "green", "blue"]},
}


def project_params():
    return read_yaml(PROJECT / "params.yaml")


def population(n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"x": rng.normal(shift, 1.0, n), "color": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2])}
    )


def score(frame):
    """A fixed model: P(yes) rises with x."""
    return 1 / (1 + np.exp(-frame["x"].to_numpy()))


def served(version, seed=0):
    train = population(4000, seed)
    prediction = pd.Series(score(train), index=train.index)
    reference = build_reference(
        train, prediction, "numeric", fields=FIELDS, model_version=version, sample_size=2000, bins=10, seed=1
    )
    reference["prediction_form"] = {"form": "probability", "class": "yes"}
    return references.Served(
        version, reference, "bentoml", "classification", {"roc_auc": 0.8, "accuracy": 0.7}
    )


def write_log(root, version, frame, worker=0, per_request=10):
    log = PredictionLog(root, worker, {"fsync": "none"})
    p = score(frame)
    rows = frame.to_dict("records")
    for start in range(0, len(rows), per_request):
        chunk = slice(start, start + per_request)
        yes = p[chunk]
        log(
            f"req-{version}-{start}",
            version,
            rows[chunk],
            ["yes" if q >= 0.5 else "no" for q in yes],
            [{"no": float(1 - q), "yes": float(q)} for q in yes],
            1.5,
        )
    log.close()


@pytest.fixture
def lookup(monkeypatch):
    known = {"1": served("1", seed=0), "2": served("2", seed=1)}

    def find(root, params, versions):
        return {v: known.get(v, f"version {v} was never packaged with one") for v in versions}

    monkeypatch.setattr(monitor, "find_served", find)
    return known


def test_the_project_monitor_params_are_valid():
    chosen = monitor.settings(project_params())
    assert chosen.min_rows >= 2 and 0 < chosen.alpha <= 0.5
    assert chosen.null_tolerance == project_params()["validate"]["null_tolerance"]


@pytest.mark.parametrize(
    ("section", "key", "value", "named"),
    [
        ("monitor", "alpha", 0, "monitor.alpha"),
        ("monitor", "alpha", "0.05", "monitor.alpha"),
        ("monitor", "min_rows", 1, "monitor.min_rows"),
        ("monitor", "min_rows", True, "monitor.min_rows"),
        ("monitor", "examples", -1, "monitor.examples"),
        ("monitor", "min_labels", 0, "monitor.min_labels"),
        ("monitor", "categorical_effect", 2, "monitor.categorical_effect"),
        ("validate", "null_tolerance", 2, "monitor.null_tolerance"),
    ],
)
def test_a_bad_setting_is_refused_by_name(section, key, value, named):
    params = project_params()
    params[section][key] = value
    with pytest.raises(ParamsError, match=named.split(".")[-1]):
        monitor.settings(params)


def test_a_window_needs_a_row_or_a_time_bound():
    params = project_params()
    params["monitor"]["window_rows"] = None
    params["monitor"]["window_hours"] = None
    with pytest.raises(ParamsError, match="cannot both be null"):
        monitor.settings(params)


def test_the_log_folder_comes_from_the_environment_as_the_service_reads_it(tmp_path):
    assert monitor.log_dir(tmp_path, {}) == tmp_path / "monitoring"
    assert monitor.log_dir(tmp_path, {"PREDICTION_LOG_DIR": "elsewhere"}) == tmp_path / "elsewhere"
    assert monitor.log_dir(tmp_path, {"PREDICTION_LOG_DIR": "/var/log/x"}) == Path("/var/log/x")


def test_the_traffic_frame_takes_the_inputs_by_name_and_the_prediction_in_the_reference_form():
    part = pd.DataFrame(
        {
            "request_id": ["a", "a"],
            "timestamp": pd.to_datetime(["2026-01-01", "2026-01-01"], utc=True),
            "inputs.x": [1.0, 2.0],
            "inputs.timestamp": ["not the log's", "own field"],
            "prediction": [True, False],
            "probabilities.true": [0.9, 0.2],
            "probabilities.false": [0.1, 0.8],
        }
    )
    reference = {
        "columns": {"x": {}, "timestamp": {}},
        "prediction_form": {"form": "probability", "class": "true"},
    }
    frame = monitor.traffic_frame(part, reference)
    assert frame["x"].tolist() == [1.0, 2.0]
    assert frame["timestamp"].tolist() == ["not the log's", "own field"]
    assert frame["prediction"].tolist() == [0.9, 0.2]
    reference["prediction_form"] = {"form": "class"}
    assert monitor.traffic_frame(part, reference)["prediction"].tolist() == ["true", "false"]
    reference["prediction_form"] = {"form": "value"}
    part["prediction"] = [3.5, 4.0]
    assert monitor.traffic_frame(part, reference)["prediction"].tolist() == [3.5, 4.0]


def test_unchanged_traffic_of_one_version_is_ok(tmp_path, lookup):
    write_log(tmp_path, "1", population(1000, seed=10))
    report = monitor.run(tmp_path, project_params(), tmp_path)
    assert report["status"] == "ok" and report["exit_code"] == 0
    assert report["window"]["versions"] == {"1": 1000}
    assert report["window"]["requests"] == 100
    assert all(r["status"] == "ok" for r in report["drift"]["1"]["features"].values())
    assert report["operations"]["1"]["requests"] == 100
    json.dumps(report, allow_nan=False)  # the report is plain JSON


def test_a_window_served_by_two_versions_is_judged_per_version(tmp_path, lookup):
    write_log(tmp_path, "1", population(1000, seed=11), worker=0)
    write_log(tmp_path, "2", population(1000, seed=12, shift=1.0), worker=1)  # only v2's traffic moved
    report = monitor.run(tmp_path, project_params(), tmp_path)
    assert set(report["drift"]) == {"1", "2"}
    assert report["drift"]["1"]["features"]["x"]["status"] == "ok"
    assert report["drift"]["2"]["features"]["x"]["status"] == "drift"
    drift_alerts = [a for a in report["alerts"] if a["kind"] == "drift" and a.get("column")]
    assert [(a["column"], a["condition"]) for a in drift_alerts] == [("x", "drift:x@v2")]
    assert "model version 2" in drift_alerts[0]["message"]
    assert report["status"] in ("warning", "critical") and report["exit_code"] in (1, 2)


def test_traffic_of_a_version_without_a_reference_is_never_ok(tmp_path, lookup):
    write_log(tmp_path, "7", population(1000, seed=13))
    report = monitor.run(tmp_path, project_params(), tmp_path)
    assert report["references"]["7"]["status"] == "missing"
    missing = [a for a in report["alerts"] if a["condition"] == "reference:missing@v7"]
    assert len(missing) == 1 and missing[0]["severity"] == "warning"
    assert report["status"] != "ok" and report["exit_code"] != 0
    assert "7" not in report["drift"]


def test_a_small_window_is_unknown_not_ok(tmp_path, lookup):
    write_log(tmp_path, "1", population(50, seed=14))
    report = monitor.run(tmp_path, project_params(), tmp_path)
    assert report["status"] == "unknown" and report["exit_code"] == 3


def test_the_window_keeps_the_newest_records(tmp_path, lookup):
    params = copy.deepcopy(project_params())
    params["monitor"]["window_rows"] = 400
    write_log(tmp_path, "1", population(1000, seed=15))
    report = monitor.run(tmp_path, params, tmp_path)
    assert report["window"]["records"] == 400
    assert report["window"]["limits"]["rows"] == 400


def test_live_performance_per_version_in_the_window_against_sklearn(tmp_path, lookup):
    from sklearn import metrics as skm

    frame = population(600, seed=16)
    write_log(tmp_path, "1", frame)
    p = score(frame)
    rng = np.random.default_rng(3)
    truth = np.where(rng.random(len(p)) < p, "yes", "no")
    lines = [
        {
            "request_id": f"req-1-{(i // 10) * 10}",
            "record": i % 10,
            "label": str(truth[i]),
            "received_at": "2026-12-01T00:00:00+00:00",
            "source": "bulk",
        }
        for i in range(len(p))
    ]
    (tmp_path / "feedback").mkdir()
    (tmp_path / "feedback" / "labels.t.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = monitor.run(tmp_path, project_params(), tmp_path)
    live = report["performance"]["versions"]["1"]
    assert live["labelled"] == 600 and live["label_coverage"] == 1.0
    assert live["live"]["roc_auc"] == pytest.approx(skm.roc_auc_score(truth == "yes", p), abs=1e-6)
    assert live["live"]["accuracy"] == pytest.approx(
        skm.accuracy_score(truth, np.where(p >= 0.5, "yes", "no"))
    )
    assert live["estimated_accuracy"] == pytest.approx(np.maximum(p, 1 - p).mean(), abs=1e-6)


def test_the_summary_is_one_line_with_the_status_first(tmp_path, lookup):
    write_log(tmp_path, "2", population(1000, seed=17, shift=1.0))
    line = monitor.summary(monitor.run(tmp_path, project_params(), tmp_path))
    assert "\n" not in line and line.split(":")[0] in ("WARNING", "CRITICAL")
    assert "'x'" in line


# --- command.py: failures before a kernel starts ---


def command_params(tmp_path):
    params = project_params()
    params["paths"]["monitor"] = str(tmp_path / "reports" / "monitor.json")
    return params


def test_a_missing_log_folder_is_unknown_with_one_line_and_an_unknown_report(tmp_path, capsys):
    params = command_params(tmp_path)
    code = command.main(tmp_path, params, tmp_path / "nowhere")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert (
        len(err) == 1 and err[0].startswith("ERROR monitor: UNKNOWN") and "no prediction log folder" in err[0]
    )
    report = json.loads(Path(params["paths"]["monitor"]).read_text())
    assert (
        report["status"] == "unknown"
        and report["exit_code"] == 3
        and "no prediction log folder" in report["error"]
    )


def test_bad_params_are_unknown_not_a_warning(tmp_path, capsys):
    params = command_params(tmp_path)
    params["monitor"]["alerts"]["error_rate"] = {"warning": 0.5, "critical": 0.1}
    (tmp_path / "predictions").mkdir()
    assert command.main(tmp_path, params, tmp_path) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "monitor.alerts.error_rate" in err[0]


def test_a_stale_report_is_replaced_when_the_monitor_cannot_run(tmp_path, capsys):
    params = command_params(tmp_path)
    target = Path(params["paths"]["monitor"])
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"status": "ok", "exit_code": 0}))
    assert command.main(tmp_path, params, tmp_path / "nowhere") == 3
    assert json.loads(target.read_text())["status"] == "unknown"


def test_labels_for_a_version_without_a_reference_are_counted_and_claim_no_metric(tmp_path, lookup):
    """A binary model's metrics need its positive class, which only its reference records."""
    frame = population(400, seed=18)
    write_log(tmp_path, "7", frame)
    lines = [
        {
            "request_id": f"req-7-{(i // 10) * 10}",
            "record": i % 10,
            "label": "yes" if i % 3 else "no",
            "received_at": "2026-12-01T00:00:00+00:00",
            "source": "bulk",
        }
        for i in range(len(frame))
    ]
    (tmp_path / "feedback").mkdir()
    (tmp_path / "feedback" / "labels.t.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = monitor.run(tmp_path, project_params(), tmp_path)
    live = report["performance"]["versions"]["7"]
    assert live["labelled"] == 400 and live["live"] is None and live["status"] == "no_reference"
    assert (
        report["performance"]["labels"]["keys"] == 400 and report["performance"]["status"] == "no_reference"
    )
    assert report["exit_code"] != 0
