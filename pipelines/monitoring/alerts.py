"""Alerts: pure rules that turn one window's monitoring findings into alerts and a status.

The monitor's other parts compute figures; this module only judges them against thresholds from
`params.yaml` (`monitor.alerts`), so a rule reads like the gate's: a small function over a dict.

Input: `findings`, one window's figures as plain dicts. Every section is optional; a section
that is absent is not judged (and a window with no judgeable drift is `unknown`, see below).

    {
      "window": {"start": ISO UTC, "end": ISO UTC, ...}  # identifies the window (dedup, keys)
      "drift": {                       # drift.drift_report(): each column's verdict
        "features": {<column>: {"status": "drift" | "ok" | "insufficient_data", ...}},
        "prediction": {"status": "drift" | "ok" | "insufficient_data", ...},
      },
      "quality": {                     # quality.quality_report(): rows, and its issues
        "rows": int,
        "issues": [{"column": str, "kind": "unseen_categories" | "out_of_range" | "nulls"
                    | "missing_column", "count": int, "examples": [request_id, ...]}],
      },
      "operations": {                  # per model version, as operations.operations() gives
        <model_version>: {
          "outcomes": {<outcome>: int},                 # tabular_predictions_total's labels
          "latency_ms": {"p50": float, "p95": float, "p99": float | None},
        },
      },
      "performance": {
        "labelled": int,                                # predictions joined to a label
        "label_coverage": float,
        "live": {<metric>: float},                      # training metric names
        "reference": {<metric>: float},                 # the model's holdout figures
      },
    }

A window served by more than one model version (monitor.py) puts `drift`, `quality`,
`performance` and `reference` ({"status": "found" | "missing", "reason", "matches_lineage"}) under
`"versions": {<model_version>: {...}}` instead; each version is judged on its own, and its
conditions end in `@v<version>` (`drift:<column>@v3`), so one version's alert never hides another's.

Output: `evaluate()` returns `{"status", "exit_code", "window", "alerts": [...]}`; each alert is
`{"id", "severity", "kind", "condition", "message"[, "column"]}`. `condition` names what is wrong
(`drift:<column>`, `operations:error_rate:<version>`, …) and `id` hashes it with the window, so an alert
is the same alert on every rerun of that window, and appears once in it (`dedup`).

Status: `critical` if any alert is critical, else `warning` if any is, else `unknown` when the
window could not be judged (no findings, or every drift verdict `insufficient_data`), else `ok`.
A known problem outranks missing data: a window too small for drift with a 50 % error rate is
critical, not unknown. Exit codes follow the Nagios plugin convention (`EXIT_CODES`); a status
this module does not know, or a crash of the monitor (`guarded`), is 3, never 1 or 2.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pipelines.core.errors import ParamsError, PipelineError
from pipelines.modeling.metrics import GREATER_IS_BETTER
from pipelines.monitoring.operations import FEEDBACK_PREFIX, outcome_rates

Severity = Literal["info", "warning", "critical"]
Kind = Literal["drift", "quality", "performance", "operations"]
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
EXIT_CODES = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}
UNKNOWN_EXIT = 3
BOUND_TOLERANCE = 1e-9

# Which outcomes are failures and which are shed load is stated once, in operations.py. An answer
# refused because the prediction log cannot be written is a failure there, and also its own
# condition here: it means the service is up but blind, and refusing everything.
LOG_OUTCOMES = frozenset({"log_unavailable"})
THRESHOLD_KEYS = (
    "drifted_features",
    "quality_rate",
    "error_rate",
    "shed_rate",
    "log_unavailable_rate",
    "refusal_rate",
    "p99_latency_ms",
    "performance_drop",
)


@dataclass(frozen=True)
class Alert:
    severity: Severity
    kind: Kind
    condition: str  # what is wrong, stable across windows: the dedup key with the window
    message: str
    column: str | None = None

    def to_dict(self, window: str) -> dict[str, Any]:
        body = {"id": alert_id(self.condition, window), **asdict(self)}
        if self.column is None:
            del body["column"]
        return body


def scoped(condition: str, message: str, version: str | None) -> tuple[str, str]:
    """A condition and message about one model version's traffic (a window served by two
    versions is judged per version); unchanged when the findings are not split by version."""
    if version is None:
        return condition, message
    return f"{condition}@v{version}", f"model version {version}: {message}"


def alert_id(condition: str, window: str) -> str:
    """The same id for the same condition in the same window, on every rerun."""
    return hashlib.sha256(f"{condition}\n{window}".encode()).hexdigest()[:16]


def window_key(window: Any) -> str:
    """A window's identity as one canonical string (key order and spacing do not matter)."""
    return json.dumps(window, sort_keys=True, separators=(",", ":"), default=str)


def level(value: float, bounds: Mapping[str, float | None]) -> Severity | None:
    """`critical` when value reaches the critical bound, `warning` the warning one, else None.
    A bound that is null is off; a value that is not a finite number is never judged."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    for severity in ("critical", "warning"):
        bound = bounds.get(severity)
        # Within float rounding of the bound counts as reaching it: 0.85 - 0.83 is 0.0199999…
        if bound is not None and value >= bound - BOUND_TOLERANCE * max(1.0, abs(bound)):
            return severity  # type: ignore[return-value]
    return None


def check_thresholds(thresholds: Mapping[str, Any]) -> None:
    """Refuses params that would silently turn a rule off or invert it (one readable line)."""
    for key in THRESHOLD_KEYS:
        bounds = thresholds.get(key)
        if not isinstance(bounds, Mapping) or set(bounds) - {"warning", "critical"}:
            raise ParamsError(f"monitor.alerts.{key} must be {{warning: <number>, critical: <number>}}")
        values = [bounds.get(s) for s in ("warning", "critical")]
        for value in values:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ParamsError(f"monitor.alerts.{key}: thresholds must be numbers or null")
        if None not in values and values[0] > values[1]:
            raise ParamsError(f"monitor.alerts.{key}: warning must not be above critical")
    if thresholds.get("prediction_drift") not in ("info", "warning", "critical"):
        raise ParamsError("monitor.alerts.prediction_drift must be info, warning or critical")
    value = thresholds.get("min_requests")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamsError("monitor.alerts.min_requests must be a whole number of at least 1")


def drift_alerts(
    drift: Mapping[str, Mapping[str, Any]], bounds: Mapping[str, Any], version: str | None = None
) -> list[Alert]:
    """One alert per drifted feature; its severity follows how many features drifted."""
    drifted = sorted(column for column, result in drift.items() if result.get("status") == "drift")
    severity = level(len(drifted), bounds)
    if severity is None:
        return []
    found = []
    for column in drifted:
        message = (
            f"feature '{column}' drifted from the reference ({len(drifted)} of {len(drift)} features drifted)"
        )
        found.append(Alert(severity, "drift", *scoped(f"drift:{column}", message, version), column))
    return found


def prediction_drift_alert(
    result: Mapping[str, Any], severity: Severity, version: str | None = None
) -> list[Alert]:
    if result.get("status") != "drift":
        return []
    return [
        Alert(
            severity,
            "drift",
            *scoped("drift:prediction", "the predictions drifted from the reference", version),
        )
    ]


QUALITY_WORDS = {
    "unseen_categories": "categories training never saw",
    "out_of_range": "values outside the training range",
    "nulls": "more nulls than the contract and training allow",
    "missing_column": "no values at all: the column is missing from the log",
}


def quality_alerts(
    quality: Mapping[str, Any], bounds: Mapping[str, Any], version: str | None = None
) -> list[Alert]:
    """One alert per quality issue, its severity by the share of the window's rows it touches;
    an issue below the warning share is still reported, as info, and a missing column is critical."""
    rows = quality.get("rows") or 0
    found: list[Alert] = []
    for issue in quality.get("issues") or []:
        column, kind, count = issue.get("column"), issue.get("kind"), issue.get("count", 0)
        share = count / rows if rows else math.nan
        severity = "critical" if kind == "missing_column" else (level(share, bounds) or "info")
        examples = ", ".join(str(e) for e in (issue.get("examples") or [])[:3])
        message = f"'{column}' has {QUALITY_WORDS.get(kind, kind)}: {count} of {rows} rows"
        message += f"; e.g. request {examples}" if examples else ""
        found.append(
            Alert(severity, "quality", *scoped(f"quality:{kind}:{column}", message, version), column)
        )
    return found


def operation_rates(outcomes: Mapping[str, int]) -> dict[str, float]:
    """Shares of every prediction request counted (the /metrics denominator; POST /feedback's
    outcomes are not predictions): failures, load shed, callers' refusals (operations.py says which
    is which), and log refusals. Empty when nothing was counted."""
    rates = outcome_rates(dict(outcomes))
    predictions = {kind: n for kind, n in outcomes.items() if not kind.startswith(FEEDBACK_PREFIX)}
    total = sum(predictions.values())
    if total == 0:
        return {}
    blind = sum(n for kind, n in predictions.items() if kind in LOG_OUTCOMES)
    return {
        "error_rate": rates["error_rate"],
        "shed_rate": rates["shed_rate"],
        "log_unavailable_rate": blind / total,
        "refusal_rate": rates["refusal_rate"],
    }


def operations_alerts(
    operations: Mapping[str, Mapping[str, Any]], thresholds: Mapping[str, Any]
) -> list[Alert]:
    """Per model version: rates once it has `min_requests` requests counted (fewer say little),
    and p99 latency whenever there is one."""
    found: list[Alert] = []
    for version, figures in sorted(operations.items()):
        outcomes = figures.get("outcomes") or {}
        requests = sum(n for kind, n in outcomes.items() if not kind.startswith(FEEDBACK_PREFIX))
        if requests >= thresholds["min_requests"]:
            for name, rate in operation_rates(outcomes).items():
                severity = level(rate, thresholds[name])
                if severity:
                    what = name.removesuffix("_rate").replace("_", " ")
                    message = f"model version {version}: {what} rate {rate:.2%} of {requests} requests"
                    found.append(Alert(severity, "operations", f"operations:{name}:{version}", message))
        p99 = (figures.get("latency_ms") or {}).get("p99")
        severity = level(p99, thresholds["p99_latency_ms"]) if p99 is not None else None
        if severity:
            message = f"model version {version}: p99 latency {p99:.1f} ms"
            found.append(Alert(severity, "operations", f"operations:p99_latency_ms:{version}", message))
    return found


def performance_alerts(
    performance: Mapping[str, Any], bounds: Mapping[str, Any], min_labels: int, version: str | None = None
) -> list[Alert]:
    """Live metrics against the model's reference, once `min_labels` predictions have labels
    (`monitor.min_labels`, the live figures' own minimum); below that, one info alert."""
    labelled = performance.get("labelled") or 0
    if labelled < min_labels:
        message = f"{labelled} labelled predictions, below the {min_labels} needed to judge live metrics"
        return [Alert("info", "performance", *scoped("performance:too_few_labels", message, version))]
    live, reference = performance.get("live") or {}, performance.get("reference") or {}
    found: list[Alert] = []
    for metric in sorted(set(live) & set(reference) & set(GREATER_IS_BETTER)):
        new, old = live[metric], reference[metric]
        drop = (old - new) if GREATER_IS_BETTER[metric] else (new - old)
        severity = level(drop, bounds)
        if severity:
            message = f"live {metric} {new:.4f} against {old:.4f} at training, on {labelled} labels"
            found.append(Alert(severity, "performance", *scoped(f"performance:{metric}", message, version)))
    return found


def parts(findings: Mapping[str, Any]) -> list[tuple[str | None, Mapping[str, Any]]]:
    """(model version, its findings) for a window split by version (`versions`), or (None, the
    findings) for one that is not."""
    versions = findings.get("versions")
    if isinstance(versions, Mapping):
        return [(str(v), part or {}) for v, part in sorted(versions.items())]
    return [(None, findings)]


def insufficient(findings: Mapping[str, Any]) -> bool:
    """True when the window cannot be judged for drift: no verdicts, or none but too-small ones."""
    verdicts = [
        r.get("status")
        for _, part in parts(findings)
        for r in ((part.get("drift") or {}).get("features") or {}).values()
    ]
    return not verdicts or all(v == "insufficient_data" for v in verdicts)


def reference_alerts(reference: Mapping[str, Any], version: str | None) -> list[Alert]:
    """A version whose traffic has no reference cannot be judged for drift or quality; one whose
    reference was built from another training split is judged against that, and says so."""
    if reference.get("status") == "missing":
        message = f"no monitoring reference, so its traffic is not judged: {reference.get('reason')}"
        return [Alert("warning", "drift", *scoped("reference:missing", message, version))]
    if reference.get("matches_lineage") is False:
        message = "the reference was built from a training split other than the one the model was trained on"
        return [Alert("info", "drift", *scoped("reference:other_data", message, version))]
    return []


def dedup(alerts: Iterable[Alert]) -> list[Alert]:
    """One alert per condition (the most severe; the first among equals), in first-seen order."""
    kept: dict[str, Alert] = {}
    for alert in alerts:
        held = kept.get(alert.condition)
        if held is None or SEVERITY_RANK[alert.severity] > SEVERITY_RANK[held.severity]:
            kept[alert.condition] = alert
    return list(kept.values())


def status_of(alerts: Iterable[Alert], judged: bool) -> str:
    worst = max((SEVERITY_RANK[a.severity] for a in alerts), default=0)
    if worst == 2:
        return "critical"
    if worst == 1:
        return "warning"
    return "ok" if judged else "unknown"


def exit_code(status: str) -> int:
    """Nagios plugin convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (and anything else)."""
    return EXIT_CODES.get(status, UNKNOWN_EXIT)


def evaluate(
    findings: Mapping[str, Any] | None, thresholds: Mapping[str, Any], *, min_labels: int
) -> dict[str, Any]:
    """The window's alerts and status, by `thresholds` (`monitor.alerts`) and `min_labels`
    (`monitor.min_labels`). No findings at all (the monitor could not run) is unknown."""
    check_thresholds(thresholds)
    findings = findings or {}
    window = window_key(findings.get("window"))
    alerts: list[Alert] = []
    for version, part in parts(findings):
        alerts += reference_alerts(part.get("reference") or {}, version)
        drift = part.get("drift") or {}
        if drift.get("features"):
            alerts += drift_alerts(drift["features"], thresholds["drifted_features"], version)
        if drift.get("prediction"):
            alerts += prediction_drift_alert(drift["prediction"], thresholds["prediction_drift"], version)
        if part.get("quality"):
            alerts += quality_alerts(part["quality"], thresholds["quality_rate"], version)
        if part.get("performance"):
            bounds = thresholds["performance_drop"]
            alerts += performance_alerts(part["performance"], bounds, min_labels, version)
    if findings.get("operations"):
        alerts += operations_alerts(findings["operations"], thresholds)
    judged = not insufficient(findings)
    if not judged:
        alerts.append(
            Alert(
                "info",
                "drift",
                "window:insufficient_data",
                "the window is too small, or empty, to judge drift",
            )
        )
    alerts = dedup(alerts)
    status = status_of(alerts, judged)
    return {
        "status": status,
        "exit_code": exit_code(status),
        "window": findings.get("window"),
        "alerts": [a.to_dict(window) for a in alerts],
    }


def guarded(run: Callable[[], str], command: str = "monitor") -> int:
    """Runs the monitor, which returns its status, and gives its exit code. Any failure (a
    crash included) is UNKNOWN with one readable line on stderr: never 1 or 2, never a traceback."""
    try:
        return exit_code(run())
    except Exception as exc:
        # Our own errors name the problem; any other exception's text may hold logged values.
        readable = isinstance(exc, PipelineError) and str(exc)
        detail = str(exc).splitlines()[0] if readable else f"unexpected {type(exc).__name__}"
        print(f"ERROR {command}: UNKNOWN, the monitor could not run: {detail}", file=sys.stderr)
        return UNKNOWN_EXIT
