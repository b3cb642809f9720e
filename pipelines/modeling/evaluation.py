"""The evaluation's plot data: curves, confusion, residuals and permutation importances.

Each kind is a frame that DVC plots read (plots/<kind>/<candidate>.csv) and plots.py draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.inspection import permutation_importance

from pipelines.modeling.metrics import GREATER_IS_BETTER, evaluate, primary_metric


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
        scoring=lambda m, a, b: sign * evaluate(m, a, b, task, positive)[metric],
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
