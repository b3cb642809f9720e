"""Candidate models: a name in params.yaml becomes a full scikit-learn Pipeline.

A candidate names a model family, and the family picks the estimator for the data set's task, so
switching `data.task` needs no change to the candidates. Hyperparameters come from the candidate's
shared `params`, with its optional per-task block (`classification:` / `regression:`) merged over
them: a key in the task block wins. The project's seed is the default `random_state`.
"""

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
from sklearn.utils._param_validation import InvalidParameterError

from pipelines.core.config import TASKS
from pipelines.core.errors import ParamsError
from pipelines.modeling.preprocessing import build_preprocessor

# model family -> task -> estimator
FAMILIES: dict[str, dict[str, type[BaseEstimator]]] = {
    "linear": {"classification": LogisticRegression, "regression": Ridge},
    "random_forest": {"classification": RandomForestClassifier, "regression": RandomForestRegressor},
    "hist_gradient_boosting": {
        "classification": HistGradientBoostingClassifier,
        "regression": HistGradientBoostingRegressor,
    },
}
# Exact estimator names from before the families: each suits one task only.
TASK_SPECIFIC: dict[str, dict[str, type[BaseEstimator]]] = {
    "logistic_regression": {"classification": LogisticRegression},
    "ridge": {"regression": Ridge},
}
ESTIMATORS = {**FAMILIES, **TASK_SPECIFIC}
SPEC_KEYS = ("model", "params", *TASKS)


def estimator_class(name: str, spec: dict[str, Any], task: str) -> type[BaseEstimator]:
    """The estimator the candidate's `model` picks for `task`."""
    kind = spec.get("model") if isinstance(spec, dict) else None
    if kind not in ESTIMATORS:
        known = f"{', '.join(FAMILIES)} (or, for one task, {', '.join(TASK_SPECIFIC)})"
        raise ParamsError(f"train.candidates.{name}.model '{kind}' is unknown; known: {known}")
    if task not in ESTIMATORS[kind]:
        tasks = ", ".join(ESTIMATORS[kind])
        raise ParamsError(f"train.candidates.{name}.model '{kind}' suits {tasks}, not {task}")
    return ESTIMATORS[kind][task]


def hyperparameter_blocks(name: str, spec: dict[str, Any], task: str) -> dict[str, dict[str, Any]]:
    """The candidate's hyperparameters for `task`, by the block they come from.

    `params` holds the shared keys the task block does not override; `<task>` holds the task
    block. Merged, they are what the estimator gets.
    """
    if not isinstance(spec, dict):
        raise ParamsError(f"train.candidates.{name} must be a mapping with a model")
    unknown = [key for key in spec if key not in SPEC_KEYS]
    if unknown:
        raise ParamsError(
            f"train.candidates.{name} has unknown keys {', '.join(map(repr, unknown))}; "
            f"a candidate has {', '.join(SPEC_KEYS)}"
        )
    blocks = {}
    for block in ("params", task):
        values = spec.get(block) or {}
        if not isinstance(values, dict):
            raise ParamsError(f"train.candidates.{name}.{block} must be a mapping of hyperparameters")
        blocks[block] = dict(values)
    blocks["params"] = {k: v for k, v in blocks["params"].items() if k not in blocks[task]}
    return blocks


def hyperparameters(name: str, spec: dict[str, Any], task: str) -> dict[str, Any]:
    """What params.yaml sets for the candidate on `task`: its task block merged over `params`."""
    blocks = hyperparameter_blocks(name, spec, task)
    return {**blocks["params"], **blocks[task]}


def build_estimator(name: str, spec: dict[str, Any], task: str, seed: int) -> BaseEstimator:
    """The estimator a candidate names, with its hyperparameters and the project's seed."""
    estimator = estimator_class(name, spec, task)()
    if "random_state" in estimator.get_params():
        estimator.set_params(random_state=seed)
    for block, values in hyperparameter_blocks(name, spec, task).items():
        _set_hyperparameters(estimator, values, f"train.candidates.{name}.{block}")
    return estimator


def _set_hyperparameters(estimator: BaseEstimator, values: dict[str, Any], where: str) -> None:
    """Set and check the values of one block, so that an error names the block to edit."""
    unknown = [key for key in values if key not in estimator.get_params()]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise ParamsError(
            f"{where}: {type(estimator).__name__} has no hyperparameter{plural} {', '.join(map(repr, unknown))}"
        )
    estimator.set_params(**values)
    try:
        estimator._validate_params()  # scikit-learn's own check of each value, which fit runs too
    except InvalidParameterError as exc:
        raise ParamsError(f"{where}: {str(exc).splitlines()[0]}") from None


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
    """Fit, turning scikit-learn's hyperparameter validation into a params error.

    build_estimator checks each value already, naming its block; this is the backstop for values
    set or checked later (the message then names the candidate only).
    """
    try:
        return model.fit(X, y)
    except InvalidParameterError as exc:
        raise ParamsError(f"train.candidates.{name}: {str(exc).splitlines()[0]}") from None
