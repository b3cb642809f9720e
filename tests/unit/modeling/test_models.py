"""pipelines/features.py and pipelines/models.py: params.yaml names become scikit-learn pipelines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.core.errors import ParamsError
from pipelines.modeling import models, preprocessing

FEATURE_PARAMS = {"numeric_imputer": "median", "scale": True, "max_categories": 5}


@pytest.fixture
def train() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    n = 80
    X = pd.DataFrame(
        {
            "num": rng.normal(size=n),
            "count": rng.integers(0, 10, n),
            "cat": rng.choice(["a", "b", "c"], n),
            "flag": rng.choice([True, False], n),
        }
    )
    X.loc[[1, 5, 9], "num"] = np.nan
    X.loc[[2, 6], "cat"] = None
    y = pd.Series(np.where(X["num"].fillna(0) + (X["cat"] == "a") > 0.3, "churned", "stayed"), name="y")
    return X, y


@pytest.fixture
def unseen() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "num": [np.nan, 0.5, 100.0],
            "count": [3, 0, 99],
            "cat": ["zzz-never-seen", None, "a"],
            "flag": [True, False, True],
        }
    )


def test_column_kinds_split_numbers_from_the_rest(train) -> None:
    X, _ = train
    numeric, categorical = preprocessing.column_kinds(X)
    assert numeric == ["num", "count"]
    assert categorical == ["cat", "flag"]


def test_unknown_imputer_is_a_params_error(train) -> None:
    with pytest.raises(ParamsError, match="numeric_imputer 'mode' is unknown"):
        preprocessing.build_preprocessor(train[0], {**FEATURE_PARAMS, "numeric_imputer": "mode"})


def test_unknown_model_names_the_candidate_and_the_known_models() -> None:
    with pytest.raises(ParamsError) as info:
        models.build_estimator("best", {"model": "xgboost"}, "classification", seed=1)
    message = str(info.value)
    assert "train.candidates.best.model 'xgboost' is unknown" in message
    for known in models.ESTIMATORS:
        assert known in message


def test_candidate_that_is_not_a_mapping_is_a_params_error() -> None:
    with pytest.raises(ParamsError, match="is unknown"):
        models.build_estimator("odd", "random_forest", "classification", seed=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "task", "suits"),
    [("ridge", "classification", "regression"), ("logistic_regression", "regression", "classification")],
)
def test_model_for_the_wrong_task(model: str, task: str, suits: str) -> None:
    with pytest.raises(ParamsError) as info:
        models.build_estimator("c", {"model": model}, task, seed=1)
    assert f"'{model}' suits {suits}, not {task}" in str(info.value)


def test_unknown_hyperparameter_is_a_readable_params_error() -> None:
    spec = {"model": "random_forest", "params": {"n_trees": 10}}
    with pytest.raises(ParamsError) as info:
        models.build_estimator("forest", spec, "classification", seed=1)
    message = str(info.value)
    assert message.startswith("train.candidates.forest.params:")
    assert "n_trees" in message and "\n" not in message


def test_invalid_hyperparameter_value_fails_at_fit_as_a_params_error(train) -> None:
    X, y = train
    spec = {"model": "logistic_regression", "params": {"C": -1.0}}
    model = models.build_pipeline(
        "logreg", spec, features=X, feature_params=FEATURE_PARAMS, task="classification", seed=1
    )
    with pytest.raises(ParamsError) as info:
        models.fit(model, X, y, "logreg")
    message = str(info.value)
    assert message.startswith("train.candidates.logreg.params:")
    assert "'C'" in message and "\n" not in message


def test_seed_and_hyperparameters_reach_the_estimator() -> None:
    spec = {"model": "random_forest", "params": {"n_estimators": 7}}
    estimator = models.build_estimator("forest", spec, "regression", seed=123)
    assert estimator.get_params()["n_estimators"] == 7
    assert estimator.get_params()["random_state"] == 123
    explicit = {"model": "random_forest", "params": {"random_state": 5}}
    assert models.build_estimator("f", explicit, "regression", seed=123).random_state == 5


def test_candidate_spec() -> None:
    candidates = {"a": {"model": "ridge"}, "b": {"model": "random_forest"}}
    assert models.candidate_spec(candidates, None) == ("a", {"model": "ridge"})
    assert models.candidate_spec(candidates, "b") == ("b", {"model": "random_forest"})
    with pytest.raises(ParamsError, match=r"candidate 'c' is not in train\.candidates"):
        models.candidate_spec(candidates, "c")
    with pytest.raises(ParamsError, match="empty"):
        models.candidate_spec({}, None)


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("logistic_regression", {"max_iter": 500}),
        ("random_forest", {"n_estimators": 10, "max_depth": 3}),
        ("hist_gradient_boosting", {"max_iter": 20}),
    ],
)
def test_classifier_pipeline_handles_gaps_and_unseen_categories(train, unseen, model, params) -> None:
    X, y = train
    pipeline = models.build_pipeline(
        "c",
        {"model": model, "params": params},
        features=X,
        feature_params=FEATURE_PARAMS,
        task="classification",
        seed=0,
    )
    models.fit(pipeline, X, y, "c")
    proba = pipeline.predict_proba(unseen)
    assert proba.shape == (3, 2)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert set(pipeline.predict(unseen)) <= {"churned", "stayed"}
    assert (pipeline.predict(X) == y).mean() > 0.7  # it learnt something


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("ridge", {"alpha": 1.0}),
        ("random_forest", {"n_estimators": 10}),
        ("hist_gradient_boosting", {"max_iter": 20}),
    ],
)
def test_regressor_pipeline_handles_gaps_and_unseen_categories(train, unseen, model, params) -> None:
    X, _ = train
    y = X["num"].fillna(0) * 3 + X["count"]
    pipeline = models.build_pipeline(
        "r",
        {"model": model, "params": params},
        features=X,
        feature_params={"numeric_imputer": "mean", "scale": False, "max_categories": 5},
        task="regression",
        seed=0,
    )
    models.fit(pipeline, X, y, "r")
    predicted = pipeline.predict(unseen)
    assert predicted.shape == (3,) and np.isfinite(predicted).all()


def test_preprocessor_output_has_no_gaps(train, unseen) -> None:
    X, _ = train
    pre = preprocessing.build_preprocessor(X, FEATURE_PARAMS).fit(X)
    out = pre.transform(unseen)
    assert np.isfinite(np.asarray(out, dtype=float)).all()
    names = list(pre.get_feature_names_out())
    assert "num" in names and any(n.startswith("cat_") for n in names)
