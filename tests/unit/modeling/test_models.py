"""pipelines/modeling/preprocessing.py and models.py: params.yaml names become scikit-learn pipelines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers.support import PROJECT, read_yaml
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge

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
    with pytest.raises(ParamsError, match=r"train\.candidates\.odd must be a mapping"):
        models.hyperparameters("odd", "random_forest", "classification")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("family", "task", "expected"),
    [
        ("linear", "classification", LogisticRegression),
        ("linear", "regression", Ridge),
        ("random_forest", "classification", RandomForestClassifier),
        ("random_forest", "regression", RandomForestRegressor),
        ("hist_gradient_boosting", "classification", HistGradientBoostingClassifier),
        ("hist_gradient_boosting", "regression", HistGradientBoostingRegressor),
        ("logistic_regression", "classification", LogisticRegression),  # task-specific names
        ("ridge", "regression", Ridge),
    ],
)
def test_the_family_picks_the_estimator_for_the_task(family: str, task: str, expected: type) -> None:
    estimator = models.build_estimator("c", {"model": family}, task, seed=1)
    assert type(estimator) is expected


LINEAR = {
    "model": "linear",
    "params": {"fit_intercept": False, "tol": 1e-3},
    "classification": {"C": 0.5, "max_iter": 300},
    "regression": {"alpha": 2.0, "tol": 1e-5},
}


def test_the_task_block_is_merged_over_the_shared_params() -> None:
    clf = models.build_estimator("linear", LINEAR, "classification", seed=1).get_params()
    assert (clf["C"], clf["max_iter"], clf["fit_intercept"], clf["tol"]) == (0.5, 300, False, 1e-3)
    reg = models.build_estimator("linear", LINEAR, "regression", seed=1).get_params()
    assert (reg["alpha"], reg["fit_intercept"], reg["tol"]) == (2.0, False, 1e-5)  # the task block wins
    assert reg["random_state"] == 1
    assert models.hyperparameters("linear", LINEAR, "regression") == {
        "fit_intercept": False,
        "tol": 1e-5,
        "alpha": 2.0,
    }
    assert models.hyperparameters("f", {"model": "random_forest"}, "regression") == {}


def test_default_candidates_build_what_they_did_before_families() -> None:
    """params.yaml's default `linear` on classification is the former `logreg` exactly."""
    params = read_yaml(PROJECT / "params.yaml")
    spec = params["train"]["candidates"]["linear"]
    new = models.build_estimator("linear", spec, "classification", seed=params["seed"])
    old = LogisticRegression(C=1.0, max_iter=2000, random_state=params["seed"])
    assert new.get_params() == old.get_params()
    assert type(models.build_estimator("linear", spec, "regression", seed=1)) is Ridge


@pytest.mark.parametrize(
    ("model", "task", "suits"),
    [("ridge", "classification", "regression"), ("logistic_regression", "regression", "classification")],
)
def test_model_for_the_wrong_task(model: str, task: str, suits: str) -> None:
    with pytest.raises(ParamsError) as info:
        models.build_estimator("c", {"model": model}, task, seed=1)
    assert f"train.candidates.c.model '{model}' suits {suits}, not {task}" in str(info.value)


def test_unknown_hyperparameter_is_a_readable_params_error() -> None:
    spec = {"model": "random_forest", "params": {"n_trees": 10}}
    with pytest.raises(ParamsError) as info:
        models.build_estimator("forest", spec, "classification", seed=1)
    message = str(info.value)
    assert message.startswith("train.candidates.forest.params:")
    assert "RandomForestClassifier" in message and "n_trees" in message and "\n" not in message


@pytest.mark.parametrize(
    ("spec", "task", "where", "words"),
    [
        # a shared key one task's estimator lacks: the error says which estimator
        ({"model": "linear", "params": {"C": 1.0}}, "regression", "params", ["Ridge", "'C'"]),
        (
            {"model": "linear", "classification": {"alpha": 1.0}},
            "classification",
            "classification",
            ["'alpha'"],
        ),
        ({"model": "linear", "classification": {"C": -1.0}}, "classification", "classification", ["'C'"]),
        ({"model": "linear", "params": {"tol": -1.0}}, "regression", "params", ["'tol'"]),
        ({"model": "linear", "regression": {"alpha": "big"}}, "regression", "regression", ["'alpha'"]),
        ({"model": "linear", "regression": [1.0]}, "regression", "regression", ["mapping"]),
    ],
)
def test_bad_hyperparameter_names_the_candidate_and_its_block(spec, task, where, words) -> None:
    with pytest.raises(ParamsError) as info:
        models.build_estimator("lin", spec, task, seed=1)
    message = str(info.value)
    assert message.startswith(f"train.candidates.lin.{where}"), message
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_a_block_for_the_other_task_is_not_checked_against_this_one() -> None:
    spec = {"model": "linear", "regression": {"alpha": -5.0}}  # wrong, but not used here
    assert type(models.build_estimator("lin", spec, "classification", seed=1)) is LogisticRegression


def test_unknown_key_of_a_candidate_is_a_params_error() -> None:
    spec = {"model": "linear", "clasification": {"C": 2.0}}  # a typo would drop the block silently
    with pytest.raises(ParamsError) as info:
        models.build_estimator("lin", spec, "classification", seed=1)
    message = str(info.value)
    assert message.startswith("train.candidates.lin has unknown keys 'clasification'")
    assert "classification" in message and "regression" in message


def test_invalid_value_that_reaches_fit_is_a_params_error(train) -> None:
    X, y = train
    model = models.build_pipeline(
        "linear",
        {"model": "linear"},
        features=X,
        feature_params=FEATURE_PARAMS,
        task="classification",
        seed=1,
    )
    model.set_params(model__C=-1.0)  # past build_estimator's check: fit's own check is the backstop
    with pytest.raises(ParamsError) as info:
        models.fit(model, X, y, "linear")
    message = str(info.value)
    assert message.startswith("train.candidates.linear:") and "'C'" in message
    assert "\n" not in message


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
        ("linear", {"max_iter": 500}),
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
        ("linear", {"alpha": 1.0}),
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
