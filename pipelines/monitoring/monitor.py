"""`make monitor`: the recent traffic in the prediction log, judged against the reference of the
model version that served it, with the service's operations and the live performance.

    window     the most recent `monitor.window_rows` answered records within `monitor.window_hours`
               of the newest one (shadow lines are not answers: left out of everything below);
               logs.recent: memory bounded by the window, not the log
    per version each model version's share of the window against its own reference (references.py):
               drift (drift.py) and data quality (quality.py), with the refusals counted for it
    operations latency, throughput and outcome rates per version (operations.py), over the window
    performance labels joined once to every logged prediction (labels.py), by prediction time; and
               for the window, per version, the live training metrics against the holdout's
    alerts     alerts.evaluate, with the Nagios status

`run` returns the report; `notebooks/monitor.ipynb` shows it and writes `reports/monitor.json`
(`write`), and `python -m pipelines monitor` runs that notebook and exits with the status's code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import files, stores
from pipelines.core.errors import ParamsError
from pipelines.monitoring import alerts, drift, labels, logs, operations, quality, references
from pipelines.monitoring.errors import MonitorError
from pipelines.monitoring.reference import PREDICTION
from pipelines.serving import trust

LOG_DIR_ENV = "PREDICTION_LOG_DIR"  # where the service writes its log (serving.prediction_log)
DEFAULT_LOG_DIR = "monitoring"
REPORT_SCHEMA = 1


@dataclass(frozen=True)
class Settings:
    """`monitor:` of params.yaml, checked. `null_tolerance` is `validate.null_tolerance`: the same
    allowance the contract gives a column's missing share."""

    alpha: float
    numeric_effect: float
    categorical_effect: float
    min_rows: int
    null_tolerance: float
    examples: int
    window_rows: int | None
    window_hours: float | None
    performance_window_minutes: int
    min_labels: int
    alerts: Mapping[str, Any]

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "alerts"}


def _number(section: Mapping[str, Any], key: str, low: float, high: float | None = None) -> float:
    value = section.get(key)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise ParamsError(f"monitor.{key} in params.yaml must be a number {bound}")
    return value


def _whole(section: Mapping[str, Any], key: str, low: int, optional: bool = False) -> int | None:
    value = section.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        also = " or null" if optional else ""
        raise ParamsError(f"monitor.{key} in params.yaml must be a whole number of at least {low}{also}")
    return value


def settings(params: Mapping[str, Any]) -> Settings:
    """The checked `monitor:` section; a bad value is one line naming its key."""
    monitor = params.get("monitor")
    if not isinstance(monitor, Mapping):
        raise ParamsError("params.yaml has no monitor: section")
    hours = monitor.get("window_hours")
    chosen = Settings(
        alpha=_number(monitor, "alpha", 1e-9, 0.5),
        numeric_effect=_number(monitor, "numeric_effect", 0.0),
        categorical_effect=_number(monitor, "categorical_effect", 0.0, 1.0),
        min_rows=_whole(monitor, "min_rows", 2),
        null_tolerance=_number(params.get("validate") or {}, "null_tolerance", 0.0, 1.0),
        examples=_whole(monitor, "examples", 0),
        window_rows=_whole(monitor, "window_rows", 1, optional=True),
        window_hours=None if hours is None else _number(monitor, "window_hours", 1e-6),
        performance_window_minutes=_whole(monitor, "performance_window_minutes", 1),
        min_labels=_whole(monitor, "min_labels", 1),
        alerts=monitor.get("alerts") or {},
    )
    if chosen.window_rows is None and chosen.window_hours is None:
        raise ParamsError("monitor.window_rows and monitor.window_hours cannot both be null")
    alerts.check_thresholds(chosen.alerts)
    return chosen


def log_dir(root: Path, environ: Mapping[str, str] | None = None) -> Path:
    """The service's log folder: PREDICTION_LOG_DIR, else `monitoring/` in the project."""
    folder = Path((environ if environ is not None else os.environ).get(LOG_DIR_ENV) or DEFAULT_LOG_DIR)
    return folder if folder.is_absolute() else root / folder


# --- the window, split by version ---


def read_window(folder: Path, chosen: Settings) -> pd.DataFrame:
    span = None if chosen.window_hours is None else timedelta(hours=chosen.window_hours)
    # Shadow lines are the other arm's answers, never returned (docs/rollout.md): not traffic.
    window = logs.recent(logs.answered(logs.iter_frames(folder)), chosen.window_rows, span)
    if window.empty:
        raise MonitorError(f"the prediction log in {folder / 'predictions'} holds no records")
    return window


def describe_window(window: pd.DataFrame, chosen: Settings) -> dict[str, Any]:
    """The window's identity (alert ids hash it) and size."""
    return {
        "start": window["timestamp"].min().isoformat(),
        "end": window["timestamp"].max().isoformat(),
        "records": len(window),
        "requests": int((window["record"] == 0).sum()),
        "versions": {str(v): int(n) for v, n in window["model_version"].value_counts().sort_index().items()},
        "limits": {"rows": chosen.window_rows, "hours": chosen.window_hours},
    }


def traffic_frame(part: pd.DataFrame, reference: Mapping[str, Any]) -> pd.DataFrame:
    """One version's records as the reference sees them: its feature columns by name, the
    prediction in the reference's form, and `request_id` (quality's examples)."""
    columns = {logs.INPUTS + name: name for name in reference["columns"]}
    frame = part[[c for c in columns if c in part.columns]].rename(columns=columns)
    form = reference.get("prediction_form") or {}
    if form.get("form") == "probability":
        column = logs.PROBABILITIES + str(form.get("class"))
        scores = part[column] if column in part.columns else pd.Series(np.nan, index=part.index)
        frame[PREDICTION] = pd.to_numeric(scores, errors="coerce")
    elif form.get("form") == "class":
        frame[PREDICTION] = part["prediction"].map(labels.class_key, na_action="ignore")
    else:
        frame[PREDICTION] = pd.to_numeric(part["prediction"], errors="coerce")
    frame["request_id"] = part["request_id"]
    return frame


def find_served(root: Path, params: Mapping[str, Any], versions: list[str]) -> dict[str, Any]:
    """Each version's `references.Served`, or a string saying why it has none. The BentoML store
    first; MLflow is imported only for versions the store lacks."""
    home = stores.bentoml_home(root, dict(params)) or Path.home() / "bentoml"
    name = params["promote"]["registered_model"]
    found: dict[str, Any] = {}
    for version in versions:
        try:
            found[version] = references.from_store(home, name, version)
        except trust.Untrusted as exc:
            found[version] = f"refused: {exc}"
    missing = [v for v, served in found.items() if served is None]
    if missing:
        import mlflow

        from pipelines.modeling import runs

        runs.use_project_experiment(root, dict(params))
        client = mlflow.MlflowClient()
        for version in missing:
            try:
                found[version] = references.from_registry(client, name, version) or (
                    f"version {version} of '{name}' was never packaged with one (run `make package`)"
                )
            except trust.Untrusted as exc:
                found[version] = f"refused: {exc}"
    return found


def bins_of(reference: Mapping[str, Any]) -> dict[str, Any]:
    """The reference's shares (PSI bins, categories) without its samples: what the report's
    plots set the window's shares against."""
    keep = ("kind", "edges", "bin_shares", "frequencies")

    def short(stats: Mapping[str, Any]) -> dict[str, Any]:
        return {k: stats[k] for k in keep if k in stats}

    return {
        "columns": {name: short(stats) for name, stats in reference["columns"].items()},
        PREDICTION: short(reference[PREDICTION]),
    }


def judge_version(part: pd.DataFrame, served: references.Served, chosen: Settings) -> dict[str, Any]:
    """Drift and quality of one version's records against its reference."""
    frame = traffic_frame(part, served.reference)
    return {
        "drift": drift.drift_report(
            frame,
            served.reference,
            alpha=chosen.alpha,
            numeric_effect=chosen.numeric_effect,
            categorical_effect=chosen.categorical_effect,
            min_rows=chosen.min_rows,
        ),
        "quality": quality.quality_report(
            frame, served.reference, null_tolerance=chosen.null_tolerance, examples=chosen.examples
        ),
    }


# --- performance ---


def positive_class(served: Any) -> str | None:
    if not isinstance(served, references.Served):
        return None
    form = served.reference.get("prediction_form") or {}
    return form.get("class") if form.get("form") == "probability" else None


def performance(
    folder: Path, window: pd.DataFrame, served: Mapping[str, Any], chosen: Settings
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Live performance by prediction time over the whole log (`windows`), and per version for
    the monitor's window (for alerts). Labels are joined once (labels.join's rules)."""
    found = labels.read_labels(folder)
    joined = None
    if len(found):
        span = timedelta(minutes=chosen.performance_window_minutes)
        frames = logs.answered(logs.iter_frames(folder, only=(*labels.LOG_FIELDS, logs.ROLE)))
        joined = labels.join(frames, found, span, examples=chosen.examples)
        positive = next((p for p in map(positive_class, served.values()) if p is not None), None)
        valid, _ = labels.valid_rows(joined)
        if len(joined.classes) == 2 and positive is None:
            # Binary metrics need the positive class, which only a reference records: with no
            # version's reference found, the labels are counted and no metric is claimed.
            overall = {"windows": [], "labels": vars(joined.report), "status": "no_reference"}
        else:
            overall = labels.live_performance(joined, positive, chosen.min_labels)
    else:
        overall = {"windows": [], "labels": vars(labels.LabelReport())}
        valid = pd.DataFrame(columns=[*labels.KEY, "model_version", "timestamp"])
    start, end = window["timestamp"].min(), window["timestamp"].max()
    probability = [c for c in window.columns if c.startswith(logs.PROBABILITIES)]
    per_version: dict[str, dict[str, Any]] = {}
    for version, part in window.groupby("model_version", sort=True):
        version = str(version)
        item = served.get(version)
        rows = valid[
            (valid["model_version"] == version) & (valid["timestamp"] >= start) & (valid["timestamp"] <= end)
        ]
        enough = len(rows) >= chosen.min_labels
        entry: dict[str, Any] = {
            "predictions": len(part),
            "labelled": len(rows),
            "label_coverage": len(rows) / len(part),
            "status": "ok" if enough else "insufficient_labels",
            "live": None,
            "reference": item.holdout if isinstance(item, references.Served) else {},
        }
        binary_unknown = joined is not None and len(joined.classes) == 2 and positive_class(item) is None
        if enough and binary_unknown:
            entry["status"] = "no_reference"  # the positive class is unknown: see references
        elif enough and joined is not None:
            entry["live"] = labels.window_scores(rows, joined.classes, positive_class(item))
        if probability:
            entry["estimated_accuracy"] = float(part[probability].max(axis=1).mean())
        per_version[version] = entry
    if probability:
        overall["estimate_caveat"] = labels.CAVEAT
    return overall, per_version


# --- the report ---


def run(root: Path, params: Mapping[str, Any], folder: Path, now: datetime | None = None) -> dict[str, Any]:
    """One monitor run over the log in `folder`: the report, with its alerts and status. Raises
    MonitorError (or ParamsError) when it cannot run: never a report that claims more than it read."""
    chosen = settings(params)
    window = read_window(folder, chosen)
    described = describe_window(window, chosen)
    versions = list(described["versions"])
    served = find_served(root, params, versions)
    traffic = operations.traffic_of([window])
    outcomes = logs.read_outcomes(folder)
    start, end = window["timestamp"].min(), window["timestamp"].max()
    figures = operations.operations(
        traffic, operations.between(outcomes, start, end) if len(outcomes) else outcomes
    )
    overall, live = performance(folder, window, served, chosen)

    findings: dict[str, Any] = {
        "window": {"start": described["start"], "end": described["end"]},
        "versions": {},
    }
    drift_section, quality_section, references_section = {}, {}, {}
    for version, part in window.groupby("model_version", sort=True):
        version = str(version)
        item = served[version]
        if isinstance(item, references.Served):
            judged = judge_version(part, item, chosen)
            source = item.reference.get("source") or {}
            references_section[version] = {
                "status": "found",
                "from": item.source,
                "rows": item.reference["rows"],
                "matches_lineage": source.get("matches_lineage"),
                **bins_of(item.reference),
            }
        else:
            judged = {}
            references_section[version] = {"status": "missing", "reason": item}
        refusals = {
            kind: n
            for kind, n in (figures.get(version, {}).get("outcomes") or {}).items()
            if kind != "ok"
            and kind not in operations.ERRORS
            and kind not in operations.SHED
            and not kind.startswith(operations.FEEDBACK_PREFIX)
        }
        if judged:
            drift_section[version] = judged["drift"]
            quality_section[version] = judged["quality"] | {"refusals": refusals}
        findings["versions"][version] = {
            **judged,
            "reference": references_section[version],
            "performance": live[version],
        }
    findings["operations"] = figures
    verdict = alerts.evaluate(findings, chosen.alerts, min_labels=chosen.min_labels)
    return {
        "schema_version": REPORT_SCHEMA,
        "status": verdict["status"],
        "exit_code": verdict["exit_code"],
        "generated_at": (now or datetime.now(UTC)).isoformat(),
        "window": described,
        "alerts": verdict["alerts"],
        "references": references_section,
        "drift": drift_section,
        "quality": quality_section,
        "operations": figures,
        "performance": {"versions": live, **overall},
        "settings": chosen.public(),
    }


def write(report: Mapping[str, Any], path: str | Path) -> None:
    """The report, written whole or not at all (files.write_json is atomic)."""
    files.write_json(report, path)


def summary(report: Mapping[str, Any]) -> str:
    """One line: the status as Nagios plugins print it, then the most severe alerts."""
    ranked = sorted(report["alerts"], key=lambda a: -alerts.SEVERITY_RANK[a["severity"]])
    shown = "; ".join(a["message"] for a in ranked if a["severity"] != "info")[:400]
    window = report["window"]
    head = (
        f"{report['status'].upper()}: {window['records']} records from {window['start']} to {window['end']}"
    )
    return head + (f": {shown}" if shown else "")
