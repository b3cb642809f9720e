"""The alert rules, against a table worked out by hand from the thresholds below (not params.yaml's,
so a change of defaults does not move these oracles)."""

from __future__ import annotations

import copy

import pytest

from pipelines.core.errors import ParamsError, PipelineError
from pipelines.monitoring import alerts

THRESHOLDS = {
    "drifted_features": {"warning": 1, "critical": 3},
    "prediction_drift": "warning",
    "quality_rate": {"warning": 0.01, "critical": 0.05},
    "error_rate": {"warning": 0.01, "critical": 0.05},
    "shed_rate": {"warning": 0.01, "critical": 0.05},
    "log_unavailable_rate": {"warning": None, "critical": 0.0001},
    "refusal_rate": {"warning": 0.25, "critical": None},
    "p99_latency_ms": {"warning": 250, "critical": 1000},
    "min_requests": 100,
    "performance_drop": {"warning": 0.02, "critical": 0.05},
}
MIN_LABELS = 200
WINDOW = {"start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T01:00:00+00:00"}


def features(*drifted: str, ok: int = 5) -> dict:
    """`ok` undrifted columns c0.., and the named ones drifted."""
    verdicts = {f"c{i}": {"status": "ok"} for i in range(ok)}
    return verdicts | {name: {"status": "drift"} for name in drifted}


def healthy() -> dict:
    return {
        "window": WINDOW,
        "drift": {"features": features(), "prediction": {"status": "ok"}},
        "quality": {"rows": 1000, "issues": []},
        "operations": {"7": {"outcomes": {"ok": 1000}, "latency_ms": {"p50": 5.0, "p95": 9.0, "p99": 12.0}}},
        "performance": {
            "labelled": 500,
            "label_coverage": 0.5,
            "live": {"roc_auc": 0.84, "log_loss": 0.40},
            "reference": {"roc_auc": 0.85, "log_loss": 0.39},
        },
    }


def evaluate(**changes: object) -> dict:
    findings = healthy() | changes
    return alerts.evaluate(findings, THRESHOLDS, min_labels=MIN_LABELS)


def by_condition(report: dict) -> dict[str, str]:
    return {a["condition"]: a["severity"] for a in report["alerts"]}


def test_a_healthy_window_is_ok_with_no_alerts() -> None:
    report = evaluate()
    assert (report["status"], report["exit_code"], report["alerts"]) == ("ok", 0, [])
    assert report["window"] == WINDOW


@pytest.mark.parametrize(
    ("drifted", "expected"),
    [
        ((), {}),
        (("x",), {"drift:x": "warning"}),
        (("x", "y"), {"drift:x": "warning", "drift:y": "warning"}),
        (("x", "y", "z"), {"drift:x": "critical", "drift:y": "critical", "drift:z": "critical"}),
    ],
)
def test_drifted_features_name_their_column_and_escalate_with_their_number(drifted, expected) -> None:
    report = evaluate(drift={"features": features(*drifted), "prediction": {"status": "ok"}})
    assert by_condition(report) == expected
    assert {a["column"] for a in report["alerts"]} == set(drifted)
    assert all(a["kind"] == "drift" for a in report["alerts"])


def test_prediction_drift_has_its_configured_severity() -> None:
    report = evaluate(drift={"features": features(), "prediction": {"status": "drift"}})
    assert by_condition(report) == {"drift:prediction": "warning"}
    assert "column" not in report["alerts"][0]
    assert report["status"] == "warning"


@pytest.mark.parametrize(
    ("kind", "count", "severity"),
    [
        ("unseen_categories", 5, "info"),  # 0.5 % of 1,000 rows: below the warning share
        ("unseen_categories", 10, "warning"),  # exactly 1 %: a bound is reached at equality
        ("out_of_range", 49, "warning"),
        ("out_of_range", 50, "critical"),
        ("nulls", 200, "critical"),
        ("missing_column", 1000, "critical"),
        ("missing_column", 1, "critical"),  # a missing column is critical whatever its share
    ],
)
def test_quality_issues_by_the_share_of_rows_they_touch(kind, count, severity) -> None:
    issue = {"column": "x", "kind": kind, "count": count, "examples": ["r1", "r2", "r3", "r4"]}
    report = evaluate(quality={"rows": 1000, "issues": [issue]})
    (alert,) = report["alerts"]
    assert (alert["condition"], alert["severity"], alert["kind"], alert["column"]) == (
        f"quality:{kind}:x",
        severity,
        "quality",
        "x",
    )
    assert f"{count} of 1000 rows" in alert["message"]
    assert "r3" in alert["message"] and "r4" not in alert["message"]  # three examples at most


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        # 1 error in 100 requests: 1 % reaches the warning bound
        ({"ok": 99, "error": 1}, {"operations:error_rate:7": "warning"}),
        ({"ok": 95, "error": 3, "unavailable": 2}, {"operations:error_rate:7": "critical"}),
        ({"ok": 980, "overloaded": 10, "too_many_requests": 10}, {"operations:shed_rate:7": "warning"}),
        # a log refusal is a failure, and its own critical condition
        (
            {"ok": 999, "log_unavailable": 1},
            {"operations:log_unavailable_rate:7": "critical"},
        ),
        (
            {"ok": 97, "log_unavailable": 3},
            {"operations:error_rate:7": "warning", "operations:log_unavailable_rate:7": "critical"},
        ),
        # callers' refusals are not our failures
        ({"ok": 70, "invalid": 20, "unauthorized": 10}, {"operations:refusal_rate:7": "warning"}),
        ({"ok": 80, "invalid": 20}, {}),
        # 99 requests: below min_requests, a 50 % error rate is not judged
        ({"ok": 50, "error": 49}, {}),
    ],
)
def test_operation_rates_by_version(outcomes, expected) -> None:
    report = evaluate(operations={"7": {"outcomes": outcomes, "latency_ms": {"p99": 10.0}}})
    assert by_condition(report) == expected


@pytest.mark.parametrize(
    ("p99", "expected"), [(249.9, None), (250.0, "warning"), (1000.0, "critical"), (None, None)]
)
def test_p99_latency(p99, expected) -> None:
    report = evaluate(operations={"8": {"outcomes": {"ok": 5}, "latency_ms": {"p99": p99}}})
    assert by_condition(report) == ({"operations:p99_latency_ms:8": expected} if expected else {})


def test_each_version_is_judged_on_its_own() -> None:
    operations = {
        "7": {"outcomes": {"ok": 1000}, "latency_ms": {"p99": 10.0}},
        "8": {"outcomes": {"ok": 90, "error": 10}, "latency_ms": {"p99": 300.0}},
    }
    report = evaluate(operations=operations)
    assert by_condition(report) == {
        "operations:error_rate:8": "critical",
        "operations:p99_latency_ms:8": "warning",
    }
    assert all("version 8" in a["message"] for a in report["alerts"])


@pytest.mark.parametrize(
    ("live", "expected"),
    [
        # roc_auc 0.85 at training: a drop of 0.019 is fine, 0.02 warns, 0.05 is critical
        ({"roc_auc": 0.831}, {}),
        ({"roc_auc": 0.83}, {"performance:roc_auc": "warning"}),
        ({"roc_auc": 0.80}, {"performance:roc_auc": "critical"}),
        ({"roc_auc": 0.95}, {}),  # better is never an alert
        # log_loss 0.39 at training: lower is better, so a rise is the drop
        ({"log_loss": 0.41}, {"performance:log_loss": "warning"}),
        ({"log_loss": 0.30}, {}),
    ],
)
def test_live_performance_against_the_reference(live, expected) -> None:
    performance = {
        "labelled": 500,
        "label_coverage": 0.5,
        "live": live,
        "reference": {"roc_auc": 0.85, "log_loss": 0.39},
    }
    assert by_condition(evaluate(performance=performance)) == expected


def test_too_few_labels_is_information_not_a_verdict() -> None:
    performance = {
        "labelled": 199,
        "label_coverage": 0.01,
        "live": {"roc_auc": 0.5},
        "reference": {"roc_auc": 0.85},
    }
    report = evaluate(performance=performance)
    assert by_condition(report) == {"performance:too_few_labels": "info"}
    assert report["status"] == "ok"


@pytest.mark.parametrize(
    "drift",
    [
        {
            "features": features(ok=0)
            | {"a": {"status": "insufficient_data"}, "b": {"status": "insufficient_data"}}
        },
        {"features": {}},
        None,
    ],
)
def test_a_window_too_small_for_drift_is_unknown(drift) -> None:
    report = evaluate(drift=drift)
    assert (report["status"], report["exit_code"]) == ("unknown", 3)
    assert by_condition(report) == {"window:insufficient_data": "info"}


def test_a_known_problem_outranks_missing_data() -> None:
    report = evaluate(
        drift={"features": {"a": {"status": "insufficient_data"}}},
        operations={"7": {"outcomes": {"ok": 50, "error": 50}, "latency_ms": {}}},
    )
    assert (report["status"], report["exit_code"]) == ("critical", 2)


@pytest.mark.parametrize("findings", [None, {}])
def test_no_findings_at_all_is_unknown(findings) -> None:
    report = alerts.evaluate(findings, THRESHOLDS, min_labels=MIN_LABELS)
    assert (report["status"], report["exit_code"]) == ("unknown", 3)


def test_dedup_keeps_one_alert_per_condition_the_most_severe() -> None:
    a = alerts.Alert("warning", "drift", "drift:x", "first", "x")
    b = alerts.Alert("critical", "drift", "drift:x", "second", "x")
    c = alerts.Alert("critical", "drift", "drift:x", "third", "x")
    d = alerts.Alert("info", "quality", "quality:nulls:y", "other", "y")
    assert alerts.dedup([a, d, b, c]) == [b, d]
    assert alerts.dedup([b, a]) == [b]


def test_an_alert_has_the_same_id_in_the_same_window_and_another_in_the_next() -> None:
    drift = {"features": features("x"), "prediction": {"status": "ok"}}
    first = evaluate(drift=drift)["alerts"][0]["id"]
    reordered = dict(reversed(list(WINDOW.items())))  # same window, keys in another order
    assert evaluate(drift=drift, window=reordered)["alerts"][0]["id"] == first
    later = {"start": "2026-01-01T01:00:00+00:00", "end": "2026-01-01T02:00:00+00:00"}
    assert evaluate(drift=drift, window=later)["alerts"][0]["id"] != first


def test_the_worst_severity_decides_the_status() -> None:
    report = evaluate(
        drift={"features": features("x"), "prediction": {"status": "ok"}},
        quality={
            "rows": 100,
            "issues": [{"column": "y", "kind": "out_of_range", "count": 10, "examples": []}],
        },
    )
    assert (report["status"], report["exit_code"]) == ("critical", 2)


@pytest.mark.parametrize(
    ("status", "code"), [("ok", 0), ("warning", 1), ("critical", 2), ("unknown", 3), ("WARNING", 3), ("", 3)]
)
def test_exit_codes_follow_the_nagios_convention(status, code) -> None:
    assert alerts.exit_code(status) == code


def test_a_crash_is_unknown_never_warning_or_critical(capsys) -> None:
    def crash() -> str:
        raise KeyError("secret-value-from-the-log")

    assert alerts.guarded(crash) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ERROR monitor: UNKNOWN")
    assert "KeyError" in err and "secret-value" not in err and "Traceback" not in err


def test_a_known_failure_is_unknown_with_its_reason(capsys) -> None:
    def fails() -> str:
        raise PipelineError("the prediction log folder monitoring/ does not exist")

    assert alerts.guarded(fails) == 3
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(("status", "code"), [("ok", 0), ("warning", 1), ("critical", 2), ("unknown", 3)])
def test_guarded_passes_the_status_through(status, code) -> None:
    assert alerts.guarded(lambda: status) == code


@pytest.mark.parametrize(
    "change",
    [
        {"error_rate": {"warning": 0.1, "critical": 0.05}},  # inverted
        {"error_rate": {"warning": "1%", "critical": 0.05}},
        {"error_rate": {"warn": 0.01, "critical": 0.05}},  # a typo would silently turn it off
        {"shed_rate": None},
        {"prediction_drift": "severe"},
        {"min_requests": 0},
        {"min_requests": True},
    ],
)
def test_bad_thresholds_are_refused_in_one_line(change) -> None:
    thresholds = copy.deepcopy(THRESHOLDS) | change
    with pytest.raises(ParamsError, match=r"monitor\.alerts\.") as caught:
        alerts.evaluate(healthy(), thresholds, min_labels=MIN_LABELS)
    assert "\n" not in str(caught.value)


def test_the_project_params_are_valid() -> None:
    import yaml
    from helpers.support import PROJECT

    monitor = yaml.safe_load((PROJECT / "params.yaml").read_text())["monitor"]
    alerts.check_thresholds(monitor["alerts"])
    assert alerts.evaluate(healthy(), monitor["alerts"], min_labels=monitor["min_labels"])["status"] == "ok"
