"""deploy/prometheus/alerts.yml: valid for Prometheus, tested by promtool, and in step with params.

`promtool` comes from Debian's `prometheus` package (`.ci/run` installs it). Without it the
promtool tests skip locally, and fail in CI (CI=true), where a skip would hide a broken file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers.support import PROJECT

RULES_DIR = PROJECT / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULE_TESTS = RULES_DIR / "alerts_test.yml"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not IN_CI,
    reason="promtool is not installed (apt-get install --no-install-recommends prometheus); CI installs it",
)


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess:
    assert PROMTOOL, "CI must have promtool: .ci/run installs Debian's prometheus package"
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def rule(name: str, severity: str) -> dict:
    (found,) = [r for r in rules() if r["alert"] == name and r["labels"]["severity"] == severity]
    return found


def alert_params() -> dict:
    return yaml.safe_load((PROJECT / "params.yaml").read_text())["monitor"]["alerts"]


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_the_unit_tests_catch_a_loosened_rule(tmp_path: Path) -> None:
    """The promtool cases can fail: with the error and shed bounds raised tenfold, they do."""
    loosened = RULES.read_text().replace(") > 0.01", ") > 0.1").replace(") > 0.05", ") > 0.5")
    assert loosened != RULES.read_text()
    (tmp_path / RULES.name).write_text(loosened)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "TabularErrorRateHigh" in result.stdout + result.stderr
    assert "TabularShedding" in result.stdout + result.stderr


def test_every_alert_has_a_severity_and_a_runbook() -> None:
    for r in rules():
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert {"summary", "description", "runbook"} <= set(r["annotations"]), r["alert"]
        assert 'job="tabular-mlops"' in r["expr"], r["alert"]


@pytest.mark.parametrize("severity", ["warning", "critical"])
def test_the_bounds_are_params_yaml_s(severity: str) -> None:
    """Prometheus cannot read params.yaml: the file states the same bounds, and this keeps them so."""
    params = alert_params()
    for name, key in (("TabularErrorRateHigh", "error_rate"), ("TabularShedding", "shed_rate")):
        expr = rule(name, severity)["expr"]
        assert float(re.search(r"\)\s*>\s*([0-9.]+)", expr).group(1)) == params[key][severity], name
        assert int(re.search(r">=\s*([0-9]+)", expr).group(1)) == params["min_requests"], name
    latency = rule("TabularPredictLatencyHigh", severity)["expr"]
    seconds = float(re.search(r">\s*([0-9.]+)\s*$", latency).group(1))
    assert seconds * 1000 == pytest.approx(params["p99_latency_ms"][severity])


def test_the_outcomes_are_the_monitor_s() -> None:
    """Failures and shed load are the same outcomes here as in `make monitor`'s figures."""
    from pipelines.monitoring.operations import ERRORS, SHED

    def outcomes(name: str) -> set[str]:
        found = {
            frozenset(m.split("|")) for m in re.findall(r'outcome=~"([^"]+)"', rule(name, "warning")["expr"])
        }
        assert len(found) == 1, name
        return set(found.pop())

    assert outcomes("TabularErrorRateHigh") == set(ERRORS)
    assert outcomes("TabularShedding") == set(SHED)


def test_the_metric_names_are_the_service_s() -> None:
    """A renamed metric would leave every rule silently empty."""
    worker = (PROJECT / "pipelines" / "serving" / "worker.py").read_text()
    for metric in ("tabular_predictions_total", "tabular_predict_latency_seconds"):
        assert f'"{metric}"' in worker
    used = set(re.findall(r"\b(tabular_[a-z_]+)", RULES.read_text()))
    assert used == {"tabular_predictions_total", "tabular_predict_latency_seconds_bucket"}
