"""`python -m pipelines monitor` (`make monitor`): run notebooks/monitor.ipynb with papermill, then
exit by the Nagios plugin convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

What can be checked before a kernel starts is checked first (params, the log folder), so a
monitor that cannot run says so in about a second. Any failure, whether ours, the notebook's or a
crash, is UNKNOWN: one line on stderr, and `reports/monitor.json` rewritten to say `unknown` with
that line, so a dashboard never shows the last good run as current. Never 1 or 2, never a
traceback. With MONITOR_WEBHOOK_URL set, a status other than ok is POSTed there (webhook.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.core import files, nbrun
from pipelines.core.errors import MonitorError, PipelineError
from pipelines.monitoring import alerts, logs, webhook
from pipelines.monitoring.monitor import REPORT_SCHEMA, log_dir, settings, summary

NOTEBOOK = Path("notebooks", "monitor.ipynb")
COMMAND = "monitor"


def unknown_report(reason: str) -> dict[str, Any]:
    return {
        "schema_version": REPORT_SCHEMA,
        "status": "unknown",
        "exit_code": alerts.UNKNOWN_EXIT,
        "generated_at": datetime.now(UTC).isoformat(),
        "error": reason,
        "window": None,
        "alerts": [],
    }


def notebook_args(root: Path, params: dict[str, Any], folder: Path) -> list[str]:
    output = Path(params["paths"]["reports"]) / NOTEBOOK.name
    timeout = (params.get("run") or {}).get("cell_timeout", 1800)
    return [
        str(root / NOTEBOOK),
        str(root / output),
        "-f",
        str(root / "params.yaml"),
        "-k",
        "python3",
        "--execution-timeout",
        str(timeout),
        "-p",
        "log_dir",
        str(folder),
    ]


def notify(report: dict[str, Any], params: dict[str, Any]) -> None:
    """POST a report whose status is not ok to MONITOR_WEBHOOK_URL, if set; one line on stderr."""
    url = webhook.webhook_url()
    if url is None or report.get("status") == "ok":
        return
    options = ((params.get("monitor") or {}).get("alerts") or {}).get("webhook") or {}
    delivery = webhook.deliver(
        report,
        url,
        timeout_s=options.get("timeout_s", 2.0),
        attempts=options.get("attempts", 4),
        backoff_s=options.get("backoff_s", 0.1),
    )
    print(webhook.describe(delivery, url), file=sys.stderr)


def run(root: Path, params: dict[str, Any], folder: Path | None = None) -> str:
    """The monitor's status; raises PipelineError with one readable line when it cannot run."""
    settings(params)  # bad params fail here, before a kernel starts
    folder = folder or log_dir(root)
    # The folder's own log, or a fleet's: one sub-folder per replica (logs.log_roots).
    if not any((found / "predictions").is_dir() for _, found in logs.log_roots(folder)):
        raise MonitorError(f"no prediction log folder at {folder / 'predictions'}")
    if importlib.util.find_spec("papermill") is None:
        raise PipelineError(
            "papermill is not installed here; run `make monitor`, which uses the project's .venv"
        )
    failure = nbrun.execute(notebook_args(root, params, folder), html=True)
    if failure is not None:
        raise PipelineError(failure.removeprefix(f"ERROR {COMMAND}: "))
    report = files.read_json(root / params["paths"]["monitor"])
    print(summary(report))
    notify(report, params)
    return str(report["status"])


def main(root: Path, params: dict[str, Any], folder: Path | None = None) -> int:
    """Run the monitor; on any failure write an `unknown` report and exit 3 with one line."""
    failure: list[str] = []

    def attempt() -> str:
        try:
            return run(root, params, folder)
        except Exception as exc:
            failure.append(str(exc).splitlines()[0] if isinstance(exc, PipelineError) else type(exc).__name__)
            raise

    code = alerts.guarded(attempt, COMMAND)
    if failure:
        target = (params.get("paths") or {}).get("monitor")
        if target:
            report = unknown_report(failure[0])
            # If even this fails, the line on stderr already says the monitor could not run.
            with contextlib.suppress(OSError):
                files.write_json(report, root / target)
            with contextlib.suppress(Exception):  # bad webhook settings: the line above is said
                notify(report, params)
    return code


def cli(argv: list[str]) -> int:
    """`python -m pipelines monitor [--log-dir DIR]`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pipelines monitor",
        description="judge the recent prediction log against the serving model's reference; "
        "exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
    )
    parser.add_argument(
        "--log-dir", help="the prediction log folder (default: PREDICTION_LOG_DIR, else monitoring/)"
    )
    args = parser.parse_args(argv)
    from pipelines.core import config

    try:
        root = config.project_root()
        params = config.load_params(root / config.PARAMS_FILE)
    except PipelineError as exc:
        print(f"ERROR {COMMAND}: UNKNOWN, the monitor could not run: {exc}", file=sys.stderr)
        return alerts.UNKNOWN_EXIT
    folder = Path(args.log_dir).resolve() if args.log_dir else None
    os.chdir(root)
    return main(root, params, folder)
