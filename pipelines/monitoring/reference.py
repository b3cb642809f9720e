"""The reference a window of traffic is compared with: small, JSON-serialisable statistics of the
champion's training data and training-set predictions, bound to the model version.

A numeric column keeps a seeded sample (the two-sample tests need values, not a summary), its
quantile bin edges with the training shares per bin (for PSI), its range, spread and null rate.
A categorical column keeps its category shares and the contract's allowed values. The prediction
is one more column: the positive-class probability (binary classification), the predicted class
(multiclass) or the predicted value (regression). The same inputs give byte-identical JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1
REFERENCE_ARTIFACT = "monitoring/reference.json"  # on the champion's MLflow run (make package)
REFERENCE_TAG = "monitoring.reference.sha256"  # its digest, on the registry version
PREDICTION = "prediction"  # the reference's key for the prediction column
Kind = Literal["numeric", "categorical"]
NUMERIC_TYPES = ("integer", "number")  # the contract's field types tested as numbers


def column_kind(series: pd.Series, spec: dict[str, Any] | None) -> Kind:
    """Numbers are compared as distributions, everything else (text, booleans) as categories.
    The contract's type wins over the frame's dtype, so a column read as text stays categorical."""
    if spec is not None:
        return "numeric" if spec.get("type") in NUMERIC_TYPES else "categorical"
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    return "numeric" if numeric else "categorical"


def category_keys(series: pd.Series) -> pd.Series:
    """Categories as text: JSON keys are strings, and the window's values go through the same map."""
    return series.dropna().astype(str)


def _plain(value: float) -> float:
    return float(value)


def numeric_stats(series: pd.Series, *, sample_size: int, bins: int, seed: int) -> dict[str, Any]:
    values = pd.to_numeric(series, errors="coerce").dropna().to_numpy(dtype=float)
    stats: dict[str, Any] = {"kind": "numeric", "n": int(values.size), "null_rate": _null_rate(series)}
    if values.size == 0:
        return stats | {"sample": [], "edges": [], "bin_shares": []}
    rng = np.random.default_rng(seed)
    take = min(sample_size, values.size)
    # Sorted, so the JSON does not depend on the frame's row order beyond the seeded draw.
    sample = np.sort(rng.choice(values, size=take, replace=False)) if take < values.size else np.sort(values)
    edges = off_the_values(np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])), values)
    q1, q3 = np.quantile(values, [0.25, 0.75])
    return stats | {
        "sample": [_plain(v) for v in sample],
        "edges": [_plain(v) for v in edges],
        "bin_shares": [_plain(s) for s in bin_shares(values, edges)],
        "min": _plain(values.min()),
        "max": _plain(values.max()),
        "mean": _plain(values.mean()),
        "sd": _plain(values.std(ddof=1)) if values.size > 1 else 0.0,
        "iqr": _plain(q3 - q1),
    }


def off_the_values(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Quantile edges of a column with repeated values fall on the values themselves; a value
    1e-7 away (float32 scoring, rounding) then changes bin. Each edge that is a value moves to
    the midpoint with the next distinct value: every training value keeps its bin, and a nearby
    value joins it. An edge on the largest value would leave the top bin empty in training and
    catch any value a hair above it: it is dropped."""
    distinct = np.unique(values)
    edges = edges[edges < distinct[-1]] if distinct.size else edges
    at = np.searchsorted(distinct, edges, side="left")
    following = at + 1 < distinct.size
    on_value = following & (distinct[np.minimum(at, distinct.size - 1)] == edges)
    midpoints = (edges + distinct[np.minimum(at + 1, distinct.size - 1)]) / 2
    return np.where(on_value, midpoints, edges)


def bin_shares(values: np.ndarray, edges: np.ndarray | list[float]) -> np.ndarray:
    """Shares of `values` in the bins the inner `edges` cut: (-inf, e0], (e0, e1], …, (e_last, inf)."""
    counts = np.bincount(
        np.searchsorted(np.asarray(edges, dtype=float), values, side="left"), minlength=len(edges) + 1
    )
    return counts / max(values.size, 1)


def categorical_stats(series: pd.Series, allowed: list[Any] | None) -> dict[str, Any]:
    keys = category_keys(series)
    shares = keys.value_counts(normalize=True).sort_index()
    return {
        "kind": "categorical",
        "n": int(keys.size),
        "null_rate": _null_rate(series),
        "frequencies": {str(k): _plain(v) for k, v in shares.items()},
        "allowed": None if allowed is None else [str(a) for a in allowed],
    }


def _null_rate(series: pd.Series) -> float:
    return _plain(series.isna().mean()) if len(series) else 0.0


def column_stats(
    series: pd.Series, spec: dict[str, Any] | None, *, sample_size: int, bins: int, seed: int
) -> dict[str, Any]:
    kind = column_kind(series, spec)
    if kind == "numeric":
        stats = numeric_stats(series, sample_size=sample_size, bins=bins, seed=seed)
    else:
        stats = categorical_stats(series, (spec or {}).get("allowed"))
    # Without a contract, a column that had no nulls in training is taken as not nullable.
    nullable = (spec or {}).get("nullable", bool(series.isna().any()))
    return stats | {"nullable": bool(nullable)}


def prediction_series(
    task: str, predictions: pd.Series, probabilities: pd.DataFrame | None, positive_class: Any = None
) -> tuple[pd.Series, Kind]:
    """The prediction as drift sees it: the positive-class score for binary classification (a
    score moves before the predicted classes do), the predicted class for multiclass, the value
    for regression. `probabilities` has one column per class label."""
    if task == "regression":
        return pd.to_numeric(predictions, errors="coerce").rename(PREDICTION), "numeric"
    if probabilities is not None and probabilities.shape[1] == 2 and positive_class is not None:
        column = positive_class if positive_class in probabilities.columns else str(positive_class)
        return probabilities[column].astype(float).rename(PREDICTION), "numeric"
    return predictions.astype(str).rename(PREDICTION), "categorical"


def build_reference(
    features: pd.DataFrame,
    prediction: pd.Series,
    prediction_kind: Kind,
    *,
    fields: dict[str, dict[str, Any]],
    model_version: str,
    sample_size: int,
    bins: int,
    seed: int,
) -> dict[str, Any]:
    """The reference of `model_version`: per-feature statistics of its training `features` (with
    the contract's `fields`, as `pipelines.data.contract.field_specs` gives them) and of its
    training-set `prediction` (see `prediction_series`)."""
    if len(features) == 0:
        raise ValueError("the training frame is empty: there is nothing to build a reference from")
    if len(prediction) != len(features):
        raise ValueError("the training predictions and the training frame differ in length")
    # Each column draws from its own stream, so adding a column does not change the others' samples.
    seeds = np.random.SeedSequence(seed).spawn(len(features.columns) + 1)
    columns = {
        str(name): column_stats(
            features[name],
            fields.get(str(name)),
            sample_size=sample_size,
            bins=bins,
            seed=int(seeds[i].generate_state(1)[0]),
        )
        for i, name in enumerate(features.columns)
    }
    spec = {"type": "number" if prediction_kind == "numeric" else "string", "nullable": False}
    predicted = column_stats(
        prediction, spec, sample_size=sample_size, bins=bins, seed=int(seeds[-1].generate_state(1)[0])
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "model_version": str(model_version),
        "rows": len(features),
        "seed": seed,
        "sample_size": sample_size,
        "bins": bins,
        "columns": columns,
        PREDICTION: predicted,
    }


def encode(reference: dict[str, Any]) -> bytes:
    """The reference as the bytes stored and hashed: sorted keys, so equal references are equal bytes."""
    return (json.dumps(reference, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode()


def check_reference(reference: dict[str, Any]) -> dict[str, Any]:
    """A reference read back from JSON, refused with a readable reason if it is not one we wrote."""
    if not isinstance(reference, dict) or reference.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"not a monitoring reference of schema version {SCHEMA_VERSION}")
    for key in ("model_version", "rows", "columns", PREDICTION):
        if key not in reference:
            raise ValueError(f"the monitoring reference has no {key!r}")
    for name, stats in reference["columns"].items():
        if stats.get("kind") not in ("numeric", "categorical"):
            raise ValueError(f"the monitoring reference's column {name!r} has no known kind")
    if not math.isfinite(float(reference["rows"])):
        raise ValueError("the monitoring reference's row count is not a number")
    return reference
