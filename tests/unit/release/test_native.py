"""The native runtime: a tree ensemble built into a shared library (the forest kernel for random
forests and extra trees; treelite, tl2cgen and gcc for gradient boosting), the numpy transform of
the ColumnTransformer, parity with scikit-learn, and the fallbacks.

Oracles come from scikit-learn directly: its ColumnTransformer's matrix (compared bit for bit)
and its predict_proba / predict on the same rows (the forest kernel's compared bit for bit).
Nothing is mocked: real gcc builds, loaded from their verified bytes.
"""

import ctypes
import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers.champion import make_frame
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipelines.modeling import models
from pipelines.release import forest_kernel, native
from pipelines.serving import runtimes, trust
from pipelines.serving.forest_kernel import ForestKernel

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
    assert record["engine"] == native.engine(estimator)
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
    if record["engine"] == "forest-kernel":
        assert np.array_equal(got, expected)


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


def loaded_kernel(estimator, threads=1):
    with trust.private_copy(forest_kernel.build(estimator), "model.so") as path:
        return ForestKernel(ctypes.CDLL(path), threads)


def random_rows(n, width, seed):
    """Normal values, some rounded to a coarse grid so that rows tie with each other and with
    the training values, whose midpoints are the thresholds."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, width))
    X[: n // 2] = np.round(X[: n // 2], 1)
    return X


@needs_gcc
@pytest.mark.parametrize(
    ("estimator", "classes"),
    [
        (RandomForestClassifier(n_estimators=25, max_depth=8, random_state=0), 2),
        (RandomForestClassifier(n_estimators=25, random_state=1), 2),
        (RandomForestClassifier(n_estimators=20, max_depth=6, random_state=2), 4),
        (RandomForestClassifier(n_estimators=15, random_state=3, class_weight="balanced"), 3),
        (ExtraTreesClassifier(n_estimators=20, random_state=4), 3),
        (ExtraTreesClassifier(n_estimators=20, max_depth=5, random_state=5), 2),
        (RandomForestRegressor(n_estimators=20, max_depth=10, random_state=6), 0),
        (RandomForestRegressor(n_estimators=10, random_state=7), 0),
        (ExtraTreesRegressor(n_estimators=15, random_state=8), 0),
        (GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=9), 2),
        (GradientBoostingClassifier(n_estimators=15, max_depth=4, random_state=10), 3),
        (GradientBoostingClassifier(n_estimators=10, init="zero", subsample=0.7, random_state=11), 2),
        (GradientBoostingRegressor(n_estimators=25, max_depth=5, learning_rate=0.3, random_state=12), 0),
        (GradientBoostingRegressor(n_estimators=10, loss="huber", max_depth=None, random_state=13), 0),
    ],
    ids=[
        "rf-binary-depth8",
        "rf-binary-unlimited",
        "rf-4-classes-depth6",
        "rf-3-classes-weighted",
        "et-3-classes-unlimited",
        "et-binary-depth5",
        "rf-regressor-depth10",
        "rf-regressor-unlimited",
        "et-regressor-unlimited",
        "gb-binary",
        "gb-3-classes",
        "gb-binary-zero-init",
        "gb-regressor",
        "gb-regressor-huber-unlimited",
    ],
)
def test_the_forest_kernel_answers_bit_for_bit_like_scikit_learn(estimator, classes):
    X = random_rows(1500, 7, seed=11)
    signal = X[:, 0] + 0.5 * X[:, 1] ** 2 + np.random.default_rng(12).normal(size=len(X))
    y = np.digitize(signal, np.quantile(signal, np.linspace(0, 1, classes + 1)[1:-1])) if classes else signal
    estimator.fit(X, y)
    kernel = loaded_kernel(estimator)
    assert (kernel.n_trees, kernel.n_features) == (np.size(estimator.estimators_), 7)
    rows = np.vstack([random_rows(3001, 7, seed=13), X[:500]])
    got = kernel.score(rows, estimator)
    if classes:
        assert np.array_equal(got, estimator.predict_proba(rows))
    else:
        assert np.array_equal(got.ravel(), estimator.predict(rows))
    assert np.array_equal(loaded_kernel(estimator, threads=2).score(rows, estimator), got)  # split in two
    assert len(kernel.score(rows[:0], estimator)) == 0


def test_float32_thresholds_are_the_largest_float32_not_above_the_threshold():
    rng = np.random.default_rng(0)
    a = rng.normal(size=5000).astype(np.float32)
    b = np.nextafter(a, np.float32(np.inf))
    thresholds = np.concatenate(
        [(a.astype(float) + b) / 2, a.astype(float), rng.normal(size=5000), [1e39, -1e39, 0.0, -0.0]]
    )
    got = forest_kernel.float32_thresholds(thresholds)
    assert got.dtype == np.float32
    assert np.all(got.astype(float) <= thresholds)
    with np.errstate(over="ignore"):
        assert np.all(np.nextafter(got, np.float32(np.inf)).astype(float) > thresholds)


@needs_gcc
@pytest.mark.parametrize("model", ["forest", "extra"])
def test_rows_on_a_threshold_and_one_float32_step_either_side_go_where_scikit_learn_sends_them(model):
    """One feature: every node's threshold lies inside the node's own interval, so rows at each
    rounded threshold (and at the float32 next to it, and at the float64 threshold itself) reach
    that node and test its comparison."""
    rng = np.random.default_rng(21)
    X = np.round(rng.normal(size=(800, 1)), 2)  # ties, so thresholds are midpoints of neighbours
    y = (X[:, 0] + rng.normal(scale=0.5, size=len(X)) > 0).astype(int)
    kind = RandomForestClassifier if model == "forest" else ExtraTreesClassifier
    estimator = kind(n_estimators=10, random_state=0).fit(X, y)
    thresholds = np.concatenate(
        [e.tree_.threshold[e.tree_.children_left != -1] for e in estimator.estimators_]
    )
    t32 = forest_kernel.float32_thresholds(thresholds)
    assert np.any(t32.astype(float) < thresholds)  # some thresholds did round up in float32
    edges = np.concatenate(
        [t32, np.nextafter(t32, np.float32(np.inf)), np.nextafter(t32, np.float32(-np.inf))]
    ).astype(float)
    rows = np.concatenate([edges, thresholds]).reshape(-1, 1)
    assert np.array_equal(loaded_kernel(estimator).score(rows), estimator.predict_proba(rows))


@needs_gcc
def test_the_forest_kernel_refuses_rows_of_another_width():
    rng = np.random.default_rng(0)
    estimator = RandomForestRegressor(n_estimators=3, random_state=0).fit(
        rng.normal(size=(50, 3)), rng.normal(size=50)
    )
    with pytest.raises(ValueError, match="3 features"):
        loaded_kernel(estimator).score(np.zeros((4, 2)))


def test_the_forest_kernel_takes_single_output_forests_and_gradient_boosting_only():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    two_outputs = RandomForestRegressor(n_estimators=2, random_state=0).fit(X, rng.normal(size=(60, 2)))
    assert not forest_kernel.supports(two_outputs)
    assert not forest_kernel.supports(HistGradientBoostingClassifier(max_iter=2).fit(X, X[:, 0] > 0))
    assert forest_kernel.supports(GradientBoostingClassifier(n_estimators=2).fit(X, X[:, 0] > 0))
    with pytest.raises(native.NotCompiled, match="does not score"):
        forest_kernel.forest_blob(two_outputs)


@needs_gcc
def test_a_forest_is_built_by_the_kernel_and_nan_rows_are_scored_by_scikit_learn(data):
    train, holdout, features = data
    model = pipeline(RandomForestClassifier(n_estimators=12, max_depth=7, random_state=0), train, features)
    library, record = compile_(model, holdout)
    assert library is not None, record["reason"]
    assert record["engine"] == "forest-kernel" and "tl2cgen" not in record["versions"]
    runtime = runtimes.NativeRuntime(library, model, "classification", float32_input=True)
    assert runtime.kernel is not None and runtime.predictor is None
    matrix = runtime.matrix_of_frame(holdout[features])
    assert np.array_equal(runtime.run(matrix), model.predict_proba(holdout[features]))
    matrix[3, 0] = np.nan  # the transform imputes, so only a hand-made matrix has NaN
    assert np.array_equal(runtime.run(matrix), model[-1].predict_proba(matrix))
