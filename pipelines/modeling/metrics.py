"""Scores, curves and importances, named as scikit-learn names them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.model_selection import KFold, StratifiedKFold, cross_validate, train_test_split

from pipelines.core.errors import ParamsError
from pipelines.data.splitting import can_stratify

# Whether a larger value is better; the promotion gate and the reports read this.
GREATER_IS_BETTER = {
    "roc_auc": True,
    "accuracy": True,
    "f1": True,
    "log_loss": False,
    "r2": True,
    "rmse": False,
    "mae": False,
}


def positive_label(labels: pd.Series, configured: Any = None) -> Any:
    """The positive class of a binary target: as configured, else the minority class."""
    counts = labels.value_counts()
    if configured is None:
        # Ties break by the sorted label, so the choice does not depend on row order.
        return sorted(counts.index[counts == counts.min()], key=str)[0]
    matches = [label for label in counts.index if str(label) == str(configured)]
    if not matches:
        raise ParamsError(f"data.positive_class '{configured}' is not a value of the target")
    return matches[0]


def classification_scores(
    y_true: pd.Series, proba: np.ndarray, classes: np.ndarray, positive: Any = None
) -> dict[str, float]:
    """roc_auc, accuracy, f1 and log_loss; multiclass gets macro averages."""
    y_pred = classes[np.argmax(proba, axis=1)]
    scores = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "log_loss": skm.log_loss(y_true, proba, labels=classes),
    }
    if len(classes) == 2:
        column = list(classes).index(positive)
        scores["roc_auc"] = skm.roc_auc_score(y_true == positive, proba[:, column])
        scores["f1"] = skm.f1_score(y_true, y_pred, pos_label=positive)
    else:
        present = np.isin(classes, pd.unique(y_true))
        scores["roc_auc"] = (
            skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=classes)
            if present.all()
            else float("nan")
        )
        scores["f1"] = skm.f1_score(y_true, y_pred, average="macro")
    return {name: float(value) for name, value in scores.items()}


def regression_scores(y_true: pd.Series, y_pred: np.ndarray) -> dict[str, float]:
    return {
        "r2": float(skm.r2_score(y_true, y_pred)),
        "rmse": float(skm.root_mean_squared_error(y_true, y_pred)),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
    }


def evaluate(model: Any, X: pd.DataFrame, y: pd.Series, task: str, positive: Any) -> dict:
    if task == "classification":
        return classification_scores(y, model.predict_proba(X), model.classes_, positive)
    return regression_scores(y, model.predict(X))


def scorer(task: str, positive: Any) -> Callable[[Any, pd.DataFrame, pd.Series], dict]:
    """A cross_validate scorer that returns every metric at once, from one predict call."""
    return lambda model, X, y: evaluate(model, X, y, task, positive)


def cv_sample(
    X: pd.DataFrame, y: pd.Series, *, task: str, max_rows: int | None, seed: int
) -> tuple[pd.DataFrame, pd.Series]:
    """The rows cross-validation runs on: all of them, or a seeded sample of `max_rows` (stratified
    by class where every class has two rows), so that its cost stops growing with the data."""
    if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 2):
        raise ParamsError(f"train.cv_max_rows must be an integer of at least 2 or null, not {max_rows!r}")
    if max_rows is None or len(X) <= max_rows:
        return X, y
    stratify = y if task == "classification" and can_stratify(y) else None
    X, _, y, _ = train_test_split(X, y, train_size=max_rows, random_state=seed, stratify=stratify)
    return X, y


def cross_validated_scores(
    model: Any,
    X: pd.DataFrame,
    y: pd.Series,
    *,
    task: str,
    positive: Any,
    folds: int,
    seed: int,
    max_rows: int | None = None,
) -> dict[str, dict[str, float]]:
    """Each metric's mean and standard deviation over seeded folds of the training split, or of a
    seeded sample of at most `max_rows` of it (`cv_sample`); the final fit uses every row."""
    X, y = cv_sample(X, y, task=task, max_rows=max_rows, seed=seed)
    if task == "classification" and can_stratify(y, folds):
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(folds, shuffle=True, random_state=seed)
    result = cross_validate(model, X, y, cv=splitter, scoring=scorer(task, positive))
    return {
        key.removeprefix("test_"): {
            "mean": float(np.mean(values)),
            "std": float(np.std(values)),
            "folds": [float(v) for v in values],
        }
        for key, values in result.items()
        if key.startswith("test_")
    }


def primary_metric(task: str) -> str:
    return "roc_auc" if task == "classification" else "r2"
