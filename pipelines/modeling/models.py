"""Candidate models: a name in params.yaml becomes a full scikit-learn Pipeline."""

from __future__ import annotations

from typing import Any

import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline

from pipelines.core.errors import ParamsError
from pipelines.modeling.preprocessing import build_preprocessor

ESTIMATORS: dict[str, dict[str, type[BaseEstimator]]] = {
    "logistic_regression": {"classification": LogisticRegression},
    "ridge": {"regression": Ridge},
    "random_forest": {
        "classification": RandomForestClassifier,
        "regression": RandomForestRegressor,
    },
    "hist_gradient_boosting": {
        "classification": HistGradientBoostingClassifier,
        "regression": HistGradientBoostingRegressor,
    },
}


def build_estimator(name: str, spec: dict[str, Any], task: str, seed: int) -> BaseEstimator:
    """The estimator a candidate names, with its hyperparameters and the project's seed."""
    kind = spec.get("model") if isinstance(spec, dict) else None
    if kind not in ESTIMATORS:
        known = ", ".join(sorted(ESTIMATORS))
        raise ParamsError(f"train.candidates.{name}.model '{kind}' is unknown; known: {known}")
    if task not in ESTIMATORS[kind]:
        tasks = ", ".join(ESTIMATORS[kind])
        raise ParamsError(f"train.candidates.{name}.model '{kind}' suits {tasks}, not {task}")
    estimator = ESTIMATORS[kind][task]()
    hyper = dict(spec.get("params") or {})
    if "random_state" in estimator.get_params():
        hyper.setdefault("random_state", seed)
    try:
        estimator.set_params(**hyper)
    except ValueError as exc:
        raise ParamsError(f"train.candidates.{name}.params: {str(exc).splitlines()[0]}") from None
    return estimator


def build_pipeline(
    name: str,
    spec: dict[str, Any],
    *,
    features: pd.DataFrame,
    feature_params: dict[str, Any],
    task: str,
    seed: int,
) -> Pipeline:
    return Pipeline(
        [
            ("preprocess", build_preprocessor(features, feature_params)),
            ("model", build_estimator(name, spec, task, seed)),
        ]
    )


def candidate_spec(candidates: dict[str, Any], name: str | None) -> tuple[str, dict[str, Any]]:
    """The named candidate of train.candidates (the first when no name is given)."""
    if not candidates:
        raise ParamsError("train.candidates is empty")
    name = name or next(iter(candidates))
    if name not in candidates:
        raise ParamsError(f"candidate '{name}' is not in train.candidates")
    return name, candidates[name]


def fit(model: Pipeline, X: pd.DataFrame, y: pd.Series, name: str) -> Pipeline:
    """Fit, turning scikit-learn's hyperparameter validation into a params error."""
    from sklearn.utils._param_validation import InvalidParameterError

    try:
        return model.fit(X, y)
    except InvalidParameterError as exc:
        raise ParamsError(f"train.candidates.{name}.params: {str(exc).splitlines()[0]}") from None
