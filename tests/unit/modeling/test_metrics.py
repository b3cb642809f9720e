"""pipelines/metrics.py: scores, the positive class, cross-validation and plot data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.core.errors import ParamsError
from pipelines.modeling import evaluation, metrics

# Binary case worked by hand. The positive class "churned" sorts BEFORE "stayed", so code that
# assumes the positive class is the second column (classes_[1]) gets these numbers wrong.
Y = pd.Series(["churned", "churned", "stayed", "stayed", "stayed"])
CLASSES = np.array(["churned", "stayed"])
P_CHURNED = np.array([0.9, 0.4, 0.6, 0.1, 0.2])
PROBA = np.column_stack([P_CHURNED, 1 - P_CHURNED])


def test_binary_scores_for_a_positive_class_that_sorts_first() -> None:
    scores = metrics.classification_scores(Y, PROBA, CLASSES, positive="churned")
    # Predictions: churned, stayed, churned, stayed, stayed -> 3 of 5 right.
    assert scores["accuracy"] == pytest.approx(3 / 5)
    # Pairs (churned, stayed) ranked right: 0.9 beats all three, 0.4 beats 0.1 and 0.2 -> 5 of 6.
    assert scores["roc_auc"] == pytest.approx(5 / 6)
    # For "churned": 1 true positive, 1 false positive, 1 false negative -> F1 = 0.5.
    assert scores["f1"] == pytest.approx(0.5)
    expected_log_loss = -np.mean(np.log([0.9, 0.4, 0.4, 0.9, 0.8]))
    assert scores["log_loss"] == pytest.approx(expected_log_loss)
    assert all(isinstance(v, float) for v in scores.values())


def test_binary_scores_follow_the_positive_class() -> None:
    other = metrics.classification_scores(Y, PROBA, CLASSES, positive="stayed")
    # For "stayed": 2 true positives, 1 false positive, 1 false negative -> F1 = 2/3.
    assert other["f1"] == pytest.approx(2 / 3)
    assert other["roc_auc"] == pytest.approx(5 / 6)  # AUC is symmetric in the positive class


def test_binary_scores_with_integer_labels() -> None:
    y = pd.Series([1, 1, 0, 0, 0])
    proba = np.column_stack([1 - P_CHURNED, P_CHURNED])
    scores = metrics.classification_scores(y, proba, np.array([0, 1]), positive=1)
    assert scores["roc_auc"] == pytest.approx(5 / 6) and scores["f1"] == pytest.approx(0.5)


def test_multiclass_scores_are_macro_averaged() -> None:
    y = pd.Series(["a", "a", "b", "b", "c", "c"])
    classes = np.array(["a", "b", "c"])
    proba = np.array(
        [
            [0.8, 0.1, 0.1],  # a -> a
            [0.2, 0.7, 0.1],  # a -> b
            [0.1, 0.8, 0.1],  # b -> b
            [0.1, 0.6, 0.3],  # b -> b
            [0.1, 0.2, 0.7],  # c -> c
            [0.3, 0.3, 0.4],  # c -> c
        ]
    )
    scores = metrics.classification_scores(y, proba, classes)
    assert scores["accuracy"] == pytest.approx(5 / 6)
    # Per class F1: a = 2/3 (P 1, R 1/2), b = 4/5 (P 2/3, R 1), c = 1 -> macro mean.
    assert scores["f1"] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    # One-vs-rest AUC per class, counting correctly ranked (class, other) pairs of its column:
    # a 7/8 (0.2 < 0.3), b 7/8 (0.6 < 0.7), c 8/8 -> macro mean.
    assert scores["roc_auc"] == pytest.approx((7 / 8 + 7 / 8 + 1) / 3)


def test_multiclass_auc_is_nan_when_a_class_is_absent() -> None:
    y = pd.Series(["a", "b", "a", "b"])
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.5, 0.3, 0.2], [0.3, 0.5, 0.2]])
    scores = metrics.classification_scores(y, proba, np.array(["a", "b", "c"]))
    assert np.isnan(scores["roc_auc"]) and scores["accuracy"] == pytest.approx(1.0)


def test_regression_scores() -> None:
    y = pd.Series([1.0, 2.0, 3.0, 4.0])
    scores = metrics.regression_scores(y, np.array([1.0, 2.0, 3.0, 5.0]))
    assert scores["rmse"] == pytest.approx(0.5)  # sqrt(1 / 4)
    assert scores["mae"] == pytest.approx(0.25)
    assert scores["r2"] == pytest.approx(1 - 1 / 5)  # total sum of squares 5
    assert set(scores) <= set(metrics.GREATER_IS_BETTER)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (["No", "No", "No", "Yes"], "Yes"),
        (["Yes", "Yes", "Yes", "No"], "No"),  # minority sorts first
        (["b", "a", "b", "a"], "a"),  # a tie breaks by the sorted label, not row order
        (["a", "b", "a", "b"], "a"),
        ([0, 0, 1, 0], 1),
    ],
)
def test_positive_label_defaults_to_the_minority(labels: list, expected) -> None:
    assert metrics.positive_label(pd.Series(labels)) == expected


def test_positive_label_as_configured() -> None:
    labels = pd.Series(["No", "No", "No", "Yes"])
    assert metrics.positive_label(labels, "No") == "No"
    # params.yaml may spell an integer label as text, or the other way round.
    assert metrics.positive_label(pd.Series([0, 0, 1]), "0") == 0
    with pytest.raises(ParamsError, match=r"data\.positive_class 'Maybe' is not a value"):
        metrics.positive_label(labels, "Maybe")


def test_primary_metric() -> None:
    assert metrics.primary_metric("classification") == "roc_auc"
    assert metrics.primary_metric("regression") == "r2"


def _fitted_classifier():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=120), "b": rng.normal(size=120)})
    y = pd.Series(np.where(X["a"] + 0.3 * rng.normal(size=120) > 0.5, "churned", "stayed"))
    return LogisticRegression().fit(X, y), X, y


def test_cross_validated_scores_are_seeded() -> None:
    model, X, y = _fitted_classifier()
    positive = metrics.positive_label(y)
    kwargs = dict(task="classification", positive=positive, folds=3, seed=5)
    first = metrics.cross_validated_scores(model, X, y, **kwargs)
    again = metrics.cross_validated_scores(model, X, y, **kwargs)
    assert first == again
    assert set(first) == {"roc_auc", "accuracy", "f1", "log_loss"}
    assert len(first["roc_auc"]["folds"]) == 3
    assert first["roc_auc"]["mean"] == pytest.approx(np.mean(first["roc_auc"]["folds"]))
    assert first["roc_auc"]["mean"] > 0.8


def test_plot_frames_for_classification() -> None:
    model, X, y = _fitted_classifier()
    frames = evaluation.plot_frames(
        model,
        X,
        y,
        task="classification",
        positive="churned",
        importance={"importance_repeats": 2, "importance_max_rows": 50},
        seed=0,
    )
    assert set(frames) == {"roc", "precision_recall", "confusion", "residuals", "importance"}
    roc = frames["roc"]
    assert roc["fpr"].iloc[0] == 0 and roc["tpr"].iloc[-1] == 1
    assert len(frames["confusion"]) == len(X)
    assert frames["residuals"].empty and list(frames["residuals"].columns) == [
        "actual",
        "predicted",
        "residual",
    ]
    importance = frames["importance"]
    assert importance["feature"].iloc[0] == "a"  # the informative column ranks first
    assert importance["importance"].is_monotonic_decreasing


def test_plot_frames_for_regression() -> None:
    from sklearn.linear_model import LinearRegression

    X = pd.DataFrame({"a": np.arange(30.0), "b": np.tile([0.0, 1.0], 15)})
    y = pd.Series(2 * X["a"] + 1)
    model = LinearRegression().fit(X, y)
    frames = evaluation.plot_frames(
        model,
        X,
        y,
        task="regression",
        positive=None,
        importance={"importance_repeats": 1, "importance_max_rows": 100},
        seed=0,
    )
    assert frames["roc"].empty and frames["confusion"].empty
    assert len(frames["residuals"]) == 30
    assert np.allclose(frames["residuals"]["residual"], 0, atol=1e-6)


def test_thin_keeps_the_ends() -> None:
    frame = pd.DataFrame({"x": range(1000)})
    thinned = evaluation.thin(frame, 50)
    assert len(thinned) <= 50
    assert thinned["x"].iloc[0] == 0 and thinned["x"].iloc[-1] == 999
    assert evaluation.thin(frame.head(10), 50).equals(frame.head(10))
