"""The native runtime: a tree ensemble built into a shared library (treelite, tl2cgen, gcc), the
numpy transform of the ColumnTransformer, parity with scikit-learn, and the fallbacks.

Oracles come from scikit-learn directly: its ColumnTransformer's matrix (compared bit for bit)
and its predict_proba / predict on the same rows. Nothing is mocked: real gcc builds, loaded
from their verified bytes.
"""

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers.champion import make_frame
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipelines.modeling import models
from pipelines.release import native
from pipelines.serving import runtimes

BOUNDS = {"min_label_agreement": 0.999, "max_metric_delta": 0.002, "max_relative_error": 1e-4}
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc on this machine")


def with_missing(frame, seed):
    """Holes in every feature, and a rare colour: what the imputers and encoders must handle."""
    rng = np.random.default_rng(seed)
    frame = frame.copy()
    frame["color"] = frame["color"].astype(object)
    for column in ("x1", "x2", "color"):
        frame.loc[rng.random(len(frame)) < 0.05, column] = np.nan
    frame.loc[rng.random(len(frame)) < 0.01, "color"] = "violet"
    return frame


@pytest.fixture(scope="module")
def data():
    train, holdout = with_missing(make_frame(2000, 1), 1), with_missing(make_frame(1500, 2), 2)
    features = ["x1", "x2", "color"]
    return train, holdout, features


def pipeline(estimator, train, features, target="label", max_categories=3):
    model = models.build_pipeline(
        "cand",
        {"model": "linear", "params": {}},
        features=train[features],
        feature_params={"max_categories": max_categories},
        task="classification",
        seed=0,
    )
    model.steps[-1] = ("model", estimator)
    return model.fit(train[features], train[target])


def compile_(model, holdout, task="classification", target="label", positive="yes", metric="roc_auc"):
    return native.compile_native(
        model, holdout, target=target, task=task, positive=positive, metric=metric, bounds=BOUNDS
    )


def test_the_numpy_transform_gives_scikit_learns_matrix_bit_for_bit(data):
    train, holdout, features = data
    model = pipeline(LogisticRegression(), train, features, max_categories=3)  # "red" infrequent-grouped
    fast = runtimes.fast_transform(model)
    assert fast is not None
    unseen = holdout[features].assign(color=["never seen", *holdout["color"].iloc[1:]])
    for X in (holdout[features], unseen):
        expected = model[0].transform(X)
        assert np.array_equal(fast.frame(X), expected)
        records = [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in X.to_dict("records")]
        assert np.array_equal(fast.records(records), expected)


def test_an_unknown_step_has_no_numpy_transform(data):
    train = data[0]
    model = Pipeline(
        [("pre", ColumnTransformer([("n", StandardScaler(), ["x1", "x2"])])), ("m", LogisticRegression())]
    ).fit(train[["x1", "x2"]].fillna(0), train["label"])
    assert runtimes.fast_transform(model) is not None  # a lone scaler is known
    model = Pipeline(
        [("pre", ColumnTransformer([("n", "passthrough", ["x1"])])), ("m", LogisticRegression())]
    )
    model.fit(train[["x1"]].fillna(0), train["label"])
    assert runtimes.fast_transform(model) is None


@needs_gcc
@pytest.mark.parametrize(
    "estimator",
    [
        RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0),
        HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=15, random_state=0),
        GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0),
    ],
    ids=["random_forest", "hist_gradient_boosting", "gradient_boosting"],
)
def test_a_tree_ensemble_builds_a_library_that_answers_like_scikit_learn(data, estimator):
    train, holdout, features = data
    model = pipeline(estimator, train, features)
    library, record = compile_(model, holdout)
    assert library is not None, record["reason"]
    assert record["runtime"] == "native" and record["transform"] == "numpy"
    assert record["sha256"] == hashlib.sha256(library).hexdigest()
    assert record["parity"]["passed"] and record["parity"]["unseen"]["passed"]
    runtime = runtimes.NativeRuntime(
        library, model, "classification", threads=1, float32_input=record["input"] == "float32"
    )
    X = holdout[features]
    got = runtime.run(runtime.matrix_of_frame(X))
    expected = model.predict_proba(X)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-9
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))


@needs_gcc
def test_a_regression_forest_builds_and_predicts_like_scikit_learn():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(size=1500), "b": rng.choice(["x", "y", "z"], size=1500)})
    frame["y"] = 3 * frame["a"] + (frame["b"] == "x") + rng.normal(scale=0.1, size=1500)
    train, holdout = frame.iloc[:1000], frame.iloc[1000:]
    model = models.build_pipeline(
        "cand", {"model": "hist_gradient_boosting", "params": {"max_iter": 40}},
        features=train[["a", "b"]], feature_params={}, task="regression", seed=0,
    ).fit(train[["a", "b"]], train["y"])  # fmt: skip
    library, record = compile_(model, holdout, task="regression", target="y", positive=None, metric="rmse")
    assert library is not None, record["reason"]
    runtime = runtimes.NativeRuntime(library, model, "regression", threads=1)
    got = runtime.run(runtime.matrix_of_frame(holdout[["a", "b"]]))
    assert isinstance(model[-1], HistGradientBoostingRegressor)
    np.testing.assert_allclose(got, model.predict(holdout[["a", "b"]]), rtol=1e-9)


def test_a_linear_model_gets_the_numpy_runtime_and_no_library(data):
    train, holdout, features = data
    model = pipeline(LogisticRegression(), train, features)
    library, record = compile_(model, holdout)
    assert library is None
    assert record["runtime"] == "numpy" and "not a tree ensemble" in record["reason"]
    runtime = runtimes.NativeRuntime(None, model, "classification")
    assert runtime.name == "numpy"
    X = holdout[features]
    assert np.array_equal(runtime.run(runtime.matrix_of_frame(X)), model.predict_proba(X))


def test_without_a_compiler_the_record_says_so_and_numpy_serves(data, monkeypatch):
    train, holdout, features = data
    model = pipeline(RandomForestClassifier(n_estimators=5, random_state=0), train, features)
    monkeypatch.setattr(native, "COMPILER", "no-such-compiler-here")
    library, record = compile_(model, holdout)
    assert library is None
    assert record["reason"] == "no C compiler ('no-such-compiler-here') on PATH to build the native library"
    assert record["runtime"] == "numpy"


@needs_gcc
def test_parity_is_checked_against_the_model_it_was_built_from(data):
    """A library built from another forest misses parity: the record says why and none serves."""
    train, holdout, features = data
    model = pipeline(RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0), train, features)
    other = pipeline(RandomForestClassifier(n_estimators=10, max_depth=2, random_state=7), train, features)
    library = native.build_library(other[-1])
    runtime = runtimes.NativeRuntime(library, model, "classification", float32_input=True)
    with pytest.raises(native.NotCompiled, match="parity missed"):
        native.verified(
            runtime, model, holdout[features], holdout["label"], "classification",
            {"positive": "yes", "metric": "roc_auc", "bounds": {**BOUNDS, "max_metric_delta": 1e-6}},
        )  # fmt: skip


def test_the_runtime_takes_bytes_not_a_path(data, tmp_path):
    train, _, features = data
    model = pipeline(RandomForestClassifier(n_estimators=2, random_state=0), train, features)
    with pytest.raises(TypeError, match="verified bytes"):
        runtimes.NativeRuntime(str(tmp_path / "model.so"), model, "classification")
