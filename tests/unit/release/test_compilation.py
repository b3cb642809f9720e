"""The compiled champion: parity with scikit-learn for every candidate type, and the fallback.

Classification runs on the default data set with the candidates params.yaml defines; regression
on a data set made here, with missing values the pipeline imputes. Nothing is mocked: real
skl2onnx conversions, checked in a real onnxruntime session.
"""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from helpers.champion import make_frame, package_project, project, train_candidate  # noqa: F401
from helpers.support import PROJECT as REPO
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from pipelines.core import config
from pipelines.data import splitting
from pipelines.modeling import metrics, models
from pipelines.release import compilation
from pipelines.serving import answers, bundle, runtimes, trust

PARAMS = config.load_params(REPO / "params.yaml")
BOUNDS = PARAMS["serving"]["parity"]


@pytest.fixture(scope="module")
def default_data():
    data = PARAMS["data"]
    frame = pd.read_csv(REPO / data["source"])
    train, holdout = splitting.split_frame(
        frame, target=data["target"], task="classification", holdout_size=0.2, seed=PARAMS["seed"]
    )
    return train, holdout


def fitted(kind_spec, train, target, ignore, task, name="cand"):
    X, y = splitting.features_and_target(train, target, ignore)
    pipeline = models.build_pipeline(
        name, kind_spec, features=X, feature_params=PARAMS["features"], task=task, seed=0
    )
    return models.fit(pipeline, X, y, name)


def loaded_model(model, onnx_bytes, record, task):
    """The model as the service holds it, answering through the compiled graph."""
    classes = [c.item() if hasattr(c, "item") else c for c in getattr(model, "classes_", [])]
    compiled = runtimes.CompiledRuntime(onnx_bytes, record["inputs"], task)
    return bundle.LoadedModel(
        model=model,
        version="1",
        task=task,
        features=list(model.feature_names_in_),
        classes=classes,
        compiled=compiled,
    )


def holdout_records(holdout, features):
    return json.loads(holdout[features].to_json(orient="records"))


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")  # float32 probabilities
@pytest.mark.parametrize("candidate", list(PARAMS["train"]["candidates"]))
def test_every_default_candidate_compiles_and_matches(default_data, candidate):
    threadpool_limits(1)
    train, holdout = default_data
    data = PARAMS["data"]
    model = fitted(
        PARAMS["train"]["candidates"][candidate], train, data["target"], data["ignore"], "classification"
    )
    positive = metrics.positive_label(holdout[data["target"]], data["positive_class"])
    onnx_bytes, record = compilation.compile_model(
        model,
        holdout,
        target=data["target"],
        task="classification",
        positive=positive,
        metric="roc_auc",
        bounds=BOUNDS,
    )
    assert record["reason"] is None and onnx_bytes is not None, record
    assert record["runtime"] == "onnx" and record["parity"]["passed"]
    assert record["parity"]["rows"] == len(holdout)
    assert record["parity"]["label_agreement"] >= BOUNDS["min_label_agreement"]
    assert record["parity"]["metric_delta"] <= BOUNDS["max_metric_delta"]
    assert set(record["versions"]) >= {"skl2onnx", "onnx", "onnxruntime"}

    # The served answer, records in, equals the scikit-learn champion's within the bounds.
    loaded = loaded_model(model, onnx_bytes, record, "classification")
    features = loaded.features
    labels, probabilities = answers.answer(loaded, holdout_records(holdout, features))
    expected = model.predict(holdout[features])
    assert np.mean(np.asarray(labels) == expected) >= BOUNDS["min_label_agreement"]
    served = np.array([[p[str(c)] for c in loaded.classes] for p in probabilities])
    reference = model.predict_proba(holdout[features])
    delta = abs(
        metrics.classification_scores(holdout[data["target"]], served, model.classes_, positive)["roc_auc"]
        - metrics.classification_scores(holdout[data["target"]], reference, model.classes_, positive)[
            "roc_auc"
        ]
    )
    assert delta <= BOUNDS["max_metric_delta"]
    # Batch scoring goes through the compiled graph too, and answers exactly as the request path.
    batch_labels, batch_probabilities = answers.answer_frame(loaded, holdout)
    assert batch_labels == labels
    assert np.allclose(batch_probabilities.to_numpy(), served, atol=1e-6)


def regression_frames():
    train, holdout = make_frame(800, 1), make_frame(300, 2)
    for frame in (train, holdout):
        frame["label"] = frame["x1"] * 3 - frame["x2"] + (frame["color"] == "red") * 2 + 10
        frame.loc[frame.index % 17 == 0, "x2"] = np.nan  # imputed by the pipeline
        frame.loc[frame.index % 23 == 0, "color"] = None
    return train, holdout


@pytest.mark.parametrize("kind", ["ridge", "random_forest", "hist_gradient_boosting"])
def test_regression_candidates_compile_and_match(kind):
    threadpool_limits(1)
    train, holdout = regression_frames()
    spec = {"model": kind, "params": {"n_estimators": 30} if kind == "random_forest" else {}}
    model = fitted(spec, train, "label", ["id"], "regression")
    onnx_bytes, record = compilation.compile_model(
        model, holdout, target="label", task="regression", positive=None, metric="r2", bounds=BOUNDS
    )
    assert record["runtime"] == "onnx", record["reason"]
    parity = record["parity"]
    assert parity["max_relative_error"] <= BOUNDS["max_relative_error"] or (
        parity["metric_delta"] <= BOUNDS["max_metric_delta"]
    )
    loaded = loaded_model(model, onnx_bytes, record, "regression")
    predictions, probabilities = answers.answer(loaded, holdout_records(holdout, loaded.features))
    assert probabilities is None
    expected = model.predict(holdout[loaded.features])
    r2_served = metrics.regression_scores(holdout["label"], np.asarray(predictions))["r2"]
    r2_sklearn = metrics.regression_scores(holdout["label"], expected)["r2"]
    assert abs(r2_served - r2_sklearn) <= BOUNDS["max_metric_delta"]
    assert np.allclose(predictions, expected, rtol=1e-3)  # records with missing values included


class HandMadeModel(LogisticRegression):
    """A subclass skl2onnx has no converter for: what a custom estimator looks like to it."""


SMALL = make_frame(400, 1), make_frame(200, 2)  # train, holdout


def small_model(estimator=None, labels=None):
    """A logistic-regression pipeline (or `estimator` in its place) fitted on the small set."""
    X, y = splitting.features_and_target(SMALL[0], "label", ["id"])
    model = models.build_pipeline(
        "cand", {"model": "logistic_regression"}, features=X, feature_params={}, task="classification", seed=0
    )
    if estimator is not None:
        model.steps[-1] = ("model", estimator)
    return model.fit(X, y if labels is None else labels(y))


def compile_small(model, **options):
    return compilation.compile_model(
        model,
        SMALL[1],
        target="label",
        task="classification",
        positive="yes",
        metric="roc_auc",
        bounds=BOUNDS,
        **options,
    )


def test_a_model_that_cannot_be_converted_is_served_by_sklearn_with_the_reason():
    onnx_bytes, record = compile_small(small_model(HandMadeModel()))
    assert onnx_bytes is None
    assert record["runtime"] == "sklearn"
    assert record["reason"].startswith("conversion failed") and "HandMadeModel" in record["reason"]


def test_a_compiled_model_that_misses_parity_is_never_served():
    """A converter that is subtly wrong: it compiles a model fitted on shuffled labels."""
    wrong = small_model(labels=lambda y: y.sample(frac=1, random_state=3).to_numpy())

    def wrong_converter(stripped, inputs):
        return compilation.to_onnx(compilation.without_imputers(wrong)[0], inputs)

    onnx_bytes, record = compile_small(small_model(), convert=wrong_converter)
    assert onnx_bytes is None and record["runtime"] == "sklearn"
    assert record["reason"].startswith("parity missed")
    assert not record["parity"]["passed"] and record["parity"]["misses"]


def test_a_tampered_compiled_file_is_refused_not_replaced(tmp_path):
    """The service loads the graph only if its hash is the one that passed parity; otherwise it
    refuses (raises), rather than quietly serving another runtime."""
    import hashlib

    onnx_bytes, record = compile_small(small_model())
    meta = {"task": "classification", "compiled": record, "digests": {bundle.COMPILED_FILE: record["sha256"]}}
    assert record["sha256"] == hashlib.sha256(onnx_bytes).hexdigest()  # the bytes parity was run on
    (tmp_path / bundle.COMPILED_FILE).write_bytes(onnx_bytes)
    assert bundle.compiled_runtime(tmp_path, meta) is not None
    (tmp_path / bundle.COMPILED_FILE).write_bytes(onnx_bytes + b"\0")
    with pytest.raises(trust.Untrusted, match="does not match its recorded SHA-256"):
        bundle.compiled_runtime(tmp_path, meta)
    (tmp_path / bundle.COMPILED_FILE).unlink()
    with pytest.raises(trust.Untrusted, match="cannot be read"):
        bundle.compiled_runtime(tmp_path, meta)
    assert bundle.compiled_runtime(tmp_path, {**meta, "compiled": {**record, "runtime": "sklearn"}}) is None


def test_the_runtime_is_named_by_the_one_that_answers():
    model = small_model()
    onnx_bytes, record = compile_small(model)
    loaded = loaded_model(model, onnx_bytes, record, "classification")
    assert loaded.runtime == "onnx"
    assert replace(loaded, compiled=None).runtime == "sklearn-frame"
    assert replace(loaded, compiled=None, arrays=runtimes.array_runtime(model)).runtime == "sklearn-arrays"
