"""The monitor report's figures, drawn from `reports/monitor.json` alone (no log values): drift
effects against their thresholds, the reference and window shares of the columns that moved
most, latency per version, and live performance by prediction time. PNG, via modeling.plots.show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

# pyplot as modeling.plots set it up: headless, before any figure is drawn
from pipelines.modeling.plots import plt

COLORS = {"drift": "tab:red", "ok": "tab:green", "insufficient_data": "tab:gray"}


def effects(drift: Mapping[str, Any], version: str) -> Figure:
    """Each column's effect as a share of its threshold (1 = the bar a drift must reach), coloured
    by verdict. The Holm-adjusted p-value must be below alpha too; the table beside says it."""
    rule = drift["rule"]
    rows = {**drift["features"], "prediction": drift["prediction"]}
    names = sorted(rows, key=lambda n: -(_relative(rows[n], rule) or 0.0))
    values = [_relative(rows[n], rule) or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(names) + 1)))
    ax.barh(names[::-1], values[::-1], color=[COLORS.get(rows[n]["status"], "tab:gray") for n in names[::-1]])
    ax.axvline(1.0, color="black", lw=1, ls="--")
    ax.set(
        xlabel="effect / threshold (Wasserstein / sd, or Jensen-Shannon)",
        title=f"model version {version}: drift by column (red: drift, grey: too few rows)",
    )
    fig.tight_layout()
    return fig


def _relative(row: Mapping[str, Any], rule: Mapping[str, Any]) -> float | None:
    if row.get("effect") is None:
        return None
    bound = rule["numeric_threshold"] if row["kind"] == "numeric" else rule["categorical_threshold"]
    return float(row["effect"]) / bound if bound else float(row["effect"])


def shares(
    drift: Mapping[str, Any], reference: Mapping[str, Any], version: str, top: int = 4
) -> Figure | None:
    """Reference against window shares for the `top` columns by effect: PSI bins for numbers (by
    the reference's quantiles, so each reference bar is about 1/bins), categories for the rest."""
    rows = {**drift["features"], "prediction": drift["prediction"]}
    specs = {**reference["columns"], "prediction": reference["prediction"]}
    ranked = [n for n in sorted(rows, key=lambda n: -(rows[n].get("effect") or 0.0)) if rows[n].get("shares")]
    chosen = ranked[:top]
    if not chosen:
        return None
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.4 * len(chosen), 3.2), squeeze=False)
    for ax, name in zip(axes[0], chosen, strict=False):
        window, spec = rows[name]["shares"], specs[name]
        if spec["kind"] == "numeric":
            labels = [f"≤{e:.3g}" for e in spec["edges"]] + [">"]
            expected, actual = spec["bin_shares"], window
        else:
            labels = list(window)
            expected = [spec["frequencies"].get(k, 0.0) for k in labels]
            actual = [window[k] for k in labels]
        x = np.arange(len(labels))
        ax.bar(x - 0.2, expected, 0.4, label="reference", color="tab:blue")
        ax.bar(x + 0.2, actual, 0.4, label="window", color=COLORS.get(rows[name]["status"], "tab:gray"))
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{name} (PSI {rows[name]['psi']:.3f})", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"model version {version}: reference and window shares", fontsize=10)
    fig.tight_layout()
    return fig


def latency(operations: Mapping[str, Any]) -> Figure | None:
    """p50 / p95 / p99 request latency per model version."""
    versions = [v for v, f in operations.items() if (f.get("latency_ms") or {}).get("p50") is not None]
    if not versions:
        return None
    frame = pd.DataFrame({v: operations[v]["latency_ms"] for v in versions}).T
    fig, ax = plt.subplots(figsize=(5, 3))
    frame.plot.bar(ax=ax, rot=0)
    ax.set(xlabel="model version", ylabel="ms", title="request latency, from the prediction log")
    fig.tight_layout()
    return fig


def live(performance: Mapping[str, Any], metric: str) -> Figure | None:
    """The live `metric` and the label-free estimate by prediction-time window, with coverage."""
    windows = pd.DataFrame(performance.get("windows") or [])
    if windows.empty:
        return None
    windows["start"] = pd.to_datetime(windows["window_start"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    for version, part in windows.groupby("model_version"):
        values = [(m or {}).get(metric) for m in part["metrics"]]
        top.plot(part["start"], values, marker="o", label=f"v{version} {metric} (labels)")
        if "estimated_accuracy" in part:
            estimate = part["estimated_accuracy"]
            top.plot(part["start"], estimate, ls=":", marker="x", label=f"v{version} estimated accuracy")
        holdout = ((performance.get("versions") or {}).get(str(version)) or {}).get("reference") or {}
        if metric in holdout:
            top.axhline(
                holdout[metric], ls="--", lw=1, color="gray", label=f"v{version} {metric} on the holdout"
            )
        bottom.bar(part["start"], part["label_coverage"], width=0.02, label=f"v{version}")
    top.set(title="live performance by prediction time", ylabel=metric)
    top.legend(fontsize=7)
    bottom.set(ylabel="label coverage")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig
