"""The drift rule: is a window of traffic still like the reference, column by column?

A column drifts only when both hold:
- its test is significant after Holm's correction across every column tested in the window
  (the features and the prediction form one family, so `alpha` bounds the chance that an
  unchanged window raises any drift alert at all). Holm controls the same family-wise error as
  Bonferroni and is never less powerful;
- its effect is large enough to matter: Wasserstein distance divided by the reference's standard
  deviation for numbers (the sd, not the IQR: the IQR is 0 for binary and most skewed count
  columns; a column constant in training is divided by 1), Jensen-Shannon distance (base 2, in
  [0, 1]) for categories.
A p-value alone flags harmless shifts in large windows; a distance alone flags noise in small
ones. Tests: two-sample Kolmogorov-Smirnov against the reference sample for numbers (the
asymptotic p-value: accurate at the default 300-row minimum, in half the exact mode's time),
chi-squared on the 2 x k table of reference and window counts for categories.

Below `min_rows` non-null values a column is `insufficient_data`, never drift or ok, and it is
left out of the family. PSI is reported beside (reference quantile bins, or categories; empty
bins get `PSI_EPSILON`) because people know it; it decides nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

from pipelines.monitoring.reference import PREDICTION, bin_shares, category_keys

PSI_EPSILON = 1e-4  # the usual floor for an empty bin's share, so that PSI stays finite
DRIFT, OK, INSUFFICIENT = "drift", "ok", "insufficient_data"
UNSEEN = "(unseen)"  # the window's share of categories the reference lacks


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index, sum((a - e) * ln(a / e)) over bins, shares floored at `epsilon`."""
    e = np.maximum(np.asarray(expected, dtype=float), epsilon)
    a = np.maximum(np.asarray(actual, dtype=float), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm step-down adjusted p-values: the k-th smallest of m is multiplied by (m - k + 1), then
    made monotone and capped at 1."""
    order = sorted(p_values, key=lambda name: p_values[name])
    m, running, adjusted = len(order), 0.0, {}
    for k, name in enumerate(order):
        running = max(running, min(1.0, (m - k) * p_values[name]))
        adjusted[name] = running
    return adjusted


def numeric_test(values: np.ndarray, ref: dict[str, Any]) -> dict[str, float]:
    """KS p-value, Wasserstein distance in reference sds, and PSI of a window's non-null numbers."""
    sample = np.asarray(ref["sample"], dtype=float)
    scale = ref["sd"] if ref.get("sd", 0.0) > 0 else 1.0
    shares = bin_shares(values, ref["edges"])
    return {
        "p_value": float(stats.ks_2samp(values, sample, method="asymp").pvalue),
        "effect": float(stats.wasserstein_distance(values, sample) / scale),
        "psi": psi(np.asarray(ref["bin_shares"]), shares),
        "shares": [float(x) for x in shares],  # in the reference's PSI bins, for the report's plots
    }


def categorical_test(keys: pd.Series, ref: dict[str, Any], reference_rows: int) -> dict[str, float]:
    """Chi-squared p-value on reference and window counts, Jensen-Shannon distance, and PSI, over the
    union of the reference's categories and the window's (an unseen one counts 0 in the reference)."""
    frequencies = pd.Series(ref["frequencies"], dtype=float)
    counts = keys.value_counts()
    categories = frequencies.index.union(counts.index)
    expected = frequencies.reindex(categories, fill_value=0.0).to_numpy()
    observed = counts.reindex(categories, fill_value=0).to_numpy(dtype=float)
    reference_counts = np.rint(expected * ref.get("n", reference_rows))
    table = np.vstack([reference_counts, observed])
    table = table[:, table.sum(axis=0) > 0]
    p_value = 1.0 if table.shape[1] < 2 else float(stats.chi2_contingency(table, correction=False).pvalue)
    actual = observed / observed.sum()
    # The window's shares of the reference's categories; values training never saw are pooled
    # under UNSEEN, so the report never echoes a caller's text (quality counts them).
    known = pd.Series(actual, index=categories).reindex(frequencies.index, fill_value=0.0)
    shares = {str(k): float(v) for k, v in known.items()} | {UNSEEN: float(1.0 - known.sum())}
    return {
        "p_value": p_value,
        "effect": float(jensenshannon(expected, actual, base=2)),
        "psi": psi(expected, actual),
        "shares": shares,
    }


def column_test(window: pd.Series, ref: dict[str, Any], reference_rows: int) -> tuple[int, dict[str, float]]:
    """(non-null n, test figures) for one column; numbers that do not parse count as nulls here
    (quality reports them)."""
    if ref["kind"] == "numeric":
        values = pd.to_numeric(window, errors="coerce").dropna().to_numpy(dtype=float)
        return values.size, numeric_test(values, ref) if values.size and ref["sample"] else {}
    keys = category_keys(window)
    return int(keys.size), categorical_test(keys, ref, reference_rows) if keys.size else {}


def column_figures(window: pd.DataFrame, reference: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each reference column's n, p-value, effect and PSI in `window` (the reference's feature
    columns, plus a `prediction` column in the reference's prediction form). A column absent
    from the window has n = 0 and no figures."""
    specs = dict(reference["columns"]) | {PREDICTION: reference[PREDICTION]}
    figures = {}
    for name, ref in specs.items():
        column = window[name] if name in window.columns else pd.Series([], dtype=object)
        n, found = column_test(column, ref, reference["rows"])
        figures[name] = {"kind": ref["kind"], "n": n} | {
            key: found.get(key) for key in ("p_value", "effect", "psi", "shares")
        }
    return figures


def apply_rule(
    figures: dict[str, dict[str, Any]],
    *,
    alpha: float,
    numeric_effect: float,
    categorical_effect: float,
    min_rows: int,
) -> dict[str, dict[str, Any]]:
    """The verdicts: `insufficient_data` below `min_rows`; otherwise drift when the Holm-adjusted
    p-value (over the columns tested here) is below `alpha` and the effect reaches its threshold."""
    results = {
        name: f
        | {
            "status": OK if f["n"] >= min_rows and f["p_value"] is not None else INSUFFICIENT,
            "adjusted_p": None,
        }
        for name, f in figures.items()
    }
    tested = {name: r["p_value"] for name, r in results.items() if r["status"] == OK}
    for name, adjusted in holm(tested).items():
        result = results[name]
        threshold = numeric_effect if result["kind"] == "numeric" else categorical_effect
        result["adjusted_p"] = adjusted
        if adjusted < alpha and result["effect"] >= threshold:
            result["status"] = DRIFT
    return results


def drift_report(
    window: pd.DataFrame,
    reference: dict[str, Any],
    *,
    alpha: float,
    numeric_effect: float,
    categorical_effect: float,
    min_rows: int,
) -> dict[str, Any]:
    """Per-column verdicts for `window` against `reference` (see `column_figures`), with the rule
    that made them."""
    results = apply_rule(
        column_figures(window, reference),
        alpha=alpha,
        numeric_effect=numeric_effect,
        categorical_effect=categorical_effect,
        min_rows=min_rows,
    )
    prediction = results.pop(PREDICTION)
    return {
        "status": _overall([*results.values(), prediction]),
        "model_version": reference["model_version"],
        "rule": {
            "correction": "holm",
            "alpha": alpha,
            "numeric_effect": "wasserstein / reference sd",
            "numeric_threshold": numeric_effect,
            "categorical_effect": "jensen-shannon distance (base 2)",
            "categorical_threshold": categorical_effect,
            "min_rows": min_rows,
        },
        "features": results,
        PREDICTION: prediction,
    }


def _overall(results: list[dict[str, Any]]) -> str:
    statuses = {r["status"] for r in results}
    if DRIFT in statuses:
        return DRIFT
    return OK if OK in statuses else INSUFFICIENT


def drifted(report: dict[str, Any]) -> list[str]:
    """The drifting columns' names, the prediction last."""
    names = [name for name, r in report["features"].items() if r["status"] == DRIFT]
    return names + ([PREDICTION] if report[PREDICTION]["status"] == DRIFT else [])
