"""What keeps training linear and its memory bounded, without changing results: text fed to the
model as categoricals (splitting.text_as_categories) and cross-validation on a bounded sample
(metrics.cv_sample, train.cv_max_rows)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from pipelines.core.errors import ParamsError
from pipelines.data.splitting import text_as_categories
from pipelines.modeling import metrics, models, runs

FEATURES = {"numeric_imputer": "median", "scale": True, "max_categories": 3}


def _frame(rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "plus", "pro", "max", None], size=rows)  # 5 values: one-hot groups the rare
    X = pd.DataFrame(
        {
            "tenure": rng.integers(0, 72, rows),
            "charges": np.where(rng.random(rows) < 0.05, np.nan, rng.normal(60, 20, rows)),
            "plan": pd.array(plan, dtype="str"),
            "region": pd.array(rng.choice(["north", "south"], size=rows), dtype="str"),
        }
    )
    logit = 0.04 * X["tenure"] - 1.5 + (X["plan"] == "pro").astype(float)
    y = pd.Series(np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "stayed", "churned"))
    return X, y


def test_text_as_categories_changes_only_the_text_columns() -> None:
    X, _ = _frame(50)
    compact = text_as_categories(X)
    assert {c: str(t) for c, t in compact.dtypes.items()} == {
        "tenure": "int64",
        "charges": "float64",
        "plan": "category",
        "region": "category",
    }
    for column in X.columns:  # same values, missing ones included, in the same rows
        assert compact[column].astype(object).equals(X[column].astype(object)), column
    assert str(X["plan"].dtype) == "str"  # the caller's frame is left alone


@pytest.mark.parametrize("candidate", ["linear", "random_forest", "hist_gradient_boosting"])
def test_a_model_fitted_on_categories_is_the_model_fitted_on_text(candidate: str) -> None:
    X, y = _frame(600)
    Xh, _ = _frame(200, seed=1)
    spec = {"model": candidate, "params": {"n_estimators": 10} if candidate == "random_forest" else {}}

    def fitted(frame: pd.DataFrame):
        model = models.build_pipeline(
            "c", spec, features=frame, feature_params=FEATURES, task="classification", seed=3
        )
        return models.fit(model, frame, y, "c")

    on_text, on_categories = fitted(X), fitted(text_as_categories(X))
    # Scored on text, as the service and batch scoring send it, and on categories, as the train
    # stage scores its holdout: bit for bit the same probabilities.
    expected = on_text.predict_proba(Xh)
    assert np.array_equal(on_categories.predict_proba(Xh), expected)
    assert np.array_equal(on_categories.predict_proba(text_as_categories(Xh)), expected)


def test_cv_below_the_bound_uses_every_row() -> None:
    X, y = _frame(300)
    model = LogisticRegression(max_iter=1000)
    kwargs = dict(task="classification", positive="churned", folds=3, seed=7)
    numeric = X[["tenure"]]
    bounded = metrics.cross_validated_scores(model, numeric, y, max_rows=300, **kwargs)
    # Oracle: scikit-learn's own cross-validation over all 300 rows, the same seeded folds.
    folds = StratifiedKFold(3, shuffle=True, random_state=7)
    accuracy = cross_val_score(model, numeric, y, cv=folds, scoring="accuracy")
    assert bounded["accuracy"]["folds"] == pytest.approx(list(accuracy), abs=0)
    assert bounded == metrics.cross_validated_scores(model, numeric, y, max_rows=None, **kwargs)


def test_cv_above_the_bound_runs_on_a_seeded_stratified_sample() -> None:
    X, y = _frame(1000)
    Xs, ys = metrics.cv_sample(X, y, task="classification", max_rows=200, seed=7)
    assert len(Xs) == len(ys) == 200
    assert Xs.index.equals(ys.index) and Xs.index.isin(X.index).all()
    assert X.loc[Xs.index].equals(Xs)  # rows as they were, not resampled values
    share = (y == "churned").mean()
    assert abs((ys == "churned").mean() - share) <= 1 / 200  # stratified: the class balance kept
    again, _ = metrics.cv_sample(X, y, task="classification", max_rows=200, seed=7)
    other, _ = metrics.cv_sample(X, y, task="classification", max_rows=200, seed=8)
    assert again.index.equals(Xs.index) and not other.index.equals(Xs.index)
    # Regression: a plain seeded sample of the same size.
    Xr, yr = metrics.cv_sample(X, X["charges"], task="regression", max_rows=150, seed=7)
    assert len(Xr) == len(yr) == 150


@pytest.mark.parametrize("bad", [0, 1, -5, 2.5, "100", True])
def test_a_bad_cv_max_rows_is_a_params_error(bad: object) -> None:
    X, y = _frame(20)
    with pytest.raises(ParamsError, match=r"train\.cv_max_rows"):
        metrics.cv_sample(X, y, task="classification", max_rows=bad, seed=0)  # type: ignore[arg-type]


def test_signature_frame_declares_categoricals_as_text() -> None:
    X, _ = _frame(5)
    dtypes = runs.signature_frame(text_as_categories(X)).dtypes.astype(str).to_dict()
    assert dtypes == runs.signature_frame(X).dtypes.astype(str).to_dict()
    assert dtypes["plan"] == "str"


def test_the_split_is_the_split_stratified_on_the_labels_themselves() -> None:
    from sklearn.model_selection import train_test_split

    from pipelines.data.splitting import split_frame

    X, y = _frame(500)
    frame = X.assign(label=y)
    train, holdout = split_frame(frame, target="label", task="classification", holdout_size=0.2, seed=9)
    # Oracle: scikit-learn stratifying on the label strings (before the labels' codes were used).
    expected_train, expected_holdout = train_test_split(frame, test_size=0.2, random_state=9, stratify=y)
    assert train.equals(expected_train.reset_index(drop=True))
    assert holdout.equals(expected_holdout.reset_index(drop=True))
