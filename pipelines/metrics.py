"""Scores, curves and importances, named as scikit-learn names them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.inspection import permutation_importance
from sklearn.model_selection import KFold, StratifiedKFold, cross_validate

from pipelines.errors import ParamsError
from pipelines.split import can_stratify

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


def score_model(model: Any, X: pd.DataFrame, y: pd.Series, task: str, positive: Any) -> dict:
    if task == "classification":
        return classification_scores(y, model.predict_proba(X), model.classes_, positive)
    return regression_scores(y, model.predict(X))


def scorer(task: str, positive: Any) -> Callable[[Any, pd.DataFrame, pd.Series], dict]:
    """A cross_validate scorer that returns every metric at once, from one predict call."""
    return lambda model, X, y: score_model(model, X, y, task, positive)


def cross_validated_scores(
    model: Any, X: pd.DataFrame, y: pd.Series, *, task: str, positive: Any, folds: int, seed: int
) -> dict[str, dict[str, float]]:
    """Each metric's mean and standard deviation over seeded folds of the training split."""
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


def curve_frames(
    y_true: pd.Series, proba: np.ndarray, classes: np.ndarray, positive: Any
) -> dict[str, pd.DataFrame]:
    """ROC and precision-recall points: of the positive class, or micro-averaged if multiclass."""
    if len(classes) == 2:
        truth = (y_true == positive).to_numpy()
        score = proba[:, list(classes).index(positive)]
    else:
        truth = (y_true.to_numpy()[:, None] == classes[None, :]).ravel()
        score = proba.ravel()
    fpr, tpr, _ = skm.roc_curve(truth, score)
    precision, recall, _ = skm.precision_recall_curve(truth, score)
    return {
        "roc": pd.DataFrame({"fpr": fpr, "tpr": tpr}).round(6),
        "precision_recall": pd.DataFrame({"recall": recall, "precision": precision}).round(6),
    }


def thin(frame: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """At most `max_points` evenly spaced rows, keeping the first and the last."""
    if len(frame) <= max_points:
        return frame
    index = np.unique(np.linspace(0, len(frame) - 1, max_points).round().astype(int))
    return frame.iloc[index].reset_index(drop=True)


PLOT_COLUMNS = {
    "roc": ["fpr", "tpr"],
    "precision_recall": ["recall", "precision"],
    "confusion": ["actual", "predicted"],
    "residuals": ["actual", "predicted", "residual"],
}


def empty_plot_frames() -> dict[str, pd.DataFrame]:
    """Header-only plot files, for the plots that do not apply to a task."""
    return {kind: pd.DataFrame(columns=columns) for kind, columns in PLOT_COLUMNS.items()}


def confusion_frame(y_true: pd.Series, y_pred: np.ndarray) -> pd.DataFrame:
    """One row per holdout row (actual, predicted): the shape DVC's confusion template reads."""
    return pd.DataFrame({"actual": y_true.astype(str).to_numpy(), "predicted": y_pred.astype(str)})


def residual_frame(y_true: pd.Series, y_pred: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {"actual": y_true.to_numpy(), "predicted": y_pred, "residual": y_true.to_numpy() - y_pred}
    ).round(6)


def importance_frame(
    model: Any,
    X: pd.DataFrame,
    y: pd.Series,
    *,
    task: str,
    positive: Any,
    metric: str,
    repeats: int,
    max_rows: int,
    seed: int,
) -> pd.DataFrame:
    """Permutation importance of each raw input column on (a seeded sample of) the holdout.

    It works for every model, and speaks in the data's own columns rather than one-hot columns.
    """
    if len(X) > max_rows:
        X = X.sample(max_rows, random_state=seed)
        y = y.loc[X.index]
    sign = 1.0 if GREATER_IS_BETTER[metric] else -1.0
    result = permutation_importance(
        model,
        X,
        y,
        scoring=lambda m, a, b: sign * score_model(m, a, b, task, positive)[metric],
        n_repeats=repeats,
        random_state=seed,
    )
    return (
        pd.DataFrame(
            {
                "feature": X.columns,
                "importance": result.importances_mean,
                "std": result.importances_std,
            }
        )
        .sort_values("importance", ascending=False)
        .round(6)
        .reset_index(drop=True)
    )


def plot_frames(
    model: Any,
    X: pd.DataFrame,
    y: pd.Series,
    *,
    task: str,
    positive: Any,
    importance: dict[str, int],
    seed: int,
    max_curve_points: int = 500,
) -> dict[str, pd.DataFrame]:
    """Every plot's data, keyed by kind. Kinds that do not apply to the task hold only a header,
    so that dvc.yaml can declare the same files for every task."""
    frames = empty_plot_frames()
    frames["importance"] = importance_frame(
        model,
        X,
        y,
        task=task,
        positive=positive,
        metric=primary_metric(task),
        repeats=importance["importance_repeats"],
        max_rows=importance["importance_max_rows"],
        seed=seed,
    )
    if task == "classification":
        curves = curve_frames(y, model.predict_proba(X), model.classes_, positive)
        frames.update({kind: thin(frame, max_curve_points) for kind, frame in curves.items()})
        frames["confusion"] = confusion_frame(y, model.predict(X))
    else:
        frames["residuals"] = residual_frame(y, model.predict(X))
    return frames


def primary_metric(task: str) -> str:
    return "roc_auc" if task == "classification" else "r2"
