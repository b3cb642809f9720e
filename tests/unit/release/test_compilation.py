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
    # and again with each text column in turn holding a value the model never saw
    text = [c for c in model.feature_names_in_ if not pd.api.types.is_numeric_dtype(holdout[c])]
    unseen = record["parity"]["unseen"]
    assert unseen["passed"] and unseen["columns"] == text and unseen["rows"] == len(text) * len(holdout)
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


# An unseen category: what a live record brings and no holdout row holds. scikit-learn's
# OneHotEncoder(handle_unknown="infrequent_if_exist") scores it, as all zeros or, when the feature
# has infrequent categories, in their column; the compiled graph must answer the same.
NOTES = [f"note{i:02d}" for i in range(40)]  # 4 common, 36 rare


def frame_with_notes(n, seed):
    """make_frame plus a text column whose rare values go with "yes": the infrequent column
    carries real weight, so encoding an unseen value as zeros instead moves the answer."""
    rng = np.random.default_rng(seed + 50)
    frame = make_frame(n, seed)
    note = rng.choice(NOTES, size=n, p=np.r_[np.full(4, 0.15), np.full(36, 0.4 / 36)])
    rare = ~np.isin(note, NOTES[:4])
    logit = 2 * frame["x1"] + np.where(rare, 2.5, -1.5)
    label = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return frame.assign(note=note, label=label)


NOTED = frame_with_notes(1500, 1), frame_with_notes(400, 2)  # train, holdout


def noted_model(max_categories):
    X, y = splitting.features_and_target(NOTED[0], "label", ["id"])
    model = models.build_pipeline(
        "cand",
        {"model": "logistic_regression"},
        features=X,
        feature_params={"max_categories": max_categories},
        task="classification",
        seed=0,
    )
    return model.fit(X, y)


def compile_noted(model, **options):
    return compilation.compile_model(
        model,
        NOTED[1],
        target="label",
        task="classification",
        positive="yes",
        metric="roc_auc",
        bounds=BOUNDS,
        **options,
    )


def infrequent(model, column):
    """The known values of `column` that share the infrequent column (scikit-learn's public names)."""
    names = set(model[0].get_feature_names_out())
    if f"{column}_infrequent_sklearn" not in names:
        return []
    _, branch, columns = next(t for t in model[0].transformers_ if t[0] == "categorical")
    known = branch[-1].categories_[list(columns).index(column)]
    return [value for value in known if f"{column}_{value}" not in names]


@pytest.mark.parametrize("max_categories", [None, 4])
def test_an_unseen_category_is_scored_as_scikit_learn_scores_it(max_categories):
    model = noted_model(max_categories)
    # The premise: with max_categories=4 the rare notes share one infrequent column, and
    # scikit-learn puts an unseen note there too; without it, an unseen note is all zeros.
    holdout = NOTED[1]
    features = list(model.feature_names_in_)
    unseen = holdout[features].assign(note="a note nobody wrote", color="purple")
    encoded = model[0].transform(unseen.head(1))
    if max_categories:
        assert infrequent(model, "note") and not infrequent(model, "color")
        known_rare = model[0].transform(unseen.head(1).assign(note=infrequent(model, "note")[0]))
        assert np.array_equal(encoded[:, -1], known_rare[:, -1]) and encoded[0, -1] == 1
    else:
        assert not infrequent(model, "note")
    onnx_bytes, record = compile_noted(model)
    assert record["runtime"] == "onnx", record["reason"]
    checked = record["parity"]["unseen"]
    assert checked["passed"] and checked["columns"] == ["color", "note"]
    assert checked["rows"] == 2 * len(holdout)

    # Through the service's own path, records in: the same answers as scikit-learn's pipeline.
    loaded = loaded_model(model, onnx_bytes, record, "classification")
    for column in ("note", "color"):
        frame = holdout[features].assign(**{column: "a note nobody wrote"})
        labels, probabilities = answers.answer(loaded, holdout_records(frame, features))
        served = np.array([[p[str(c)] for c in loaded.classes] for p in probabilities])
        assert np.allclose(served, model.predict_proba(frame), atol=1e-5)
        assert labels == list(model.predict(frame))
        batch_labels, _ = answers.answer_frame(loaded, frame)
        assert batch_labels == labels


def test_a_graph_that_fails_on_an_unseen_category_is_never_served(monkeypatch):
    """The graph as skl2onnx writes it (zeros=0): the holdout alone passes, the unseen rows fail."""
    monkeypatch.setattr(compilation, "unknown_policy", lambda model: "error")
    onnx_bytes, record = compile_noted(noted_model(None))
    assert onnx_bytes is None and record["runtime"] == "sklearn"
    assert record["parity"]["passed"] is True  # the plain holdout: every category is known
    assert (
        record["reason"].startswith("onnxruntime could not run it") and "Unknown Category" in record["reason"]
    )


def test_a_graph_that_leaves_unseen_values_out_of_the_infrequent_column_is_never_served(monkeypatch):
    """zeros=1 alone scores an unseen note as all zeros, where scikit-learn puts it among the
    rare notes, which here mostly mean "yes": parity on the unseen rows must catch it."""
    monkeypatch.setattr(compilation, "unknown_policy", lambda model: "ignore")
    onnx_bytes, record = compile_noted(noted_model(4))
    assert onnx_bytes is None and record["runtime"] == "sklearn"
    assert record["reason"].startswith("parity missed: with unseen values: labels agree")
    assert not record["parity"]["unseen"]["passed"] and record["parity"]["label_agreement"] == 1.0


def test_a_lone_text_column_with_infrequent_categories_is_not_compiled():
    """skl2onnx converts infrequent categories only when the encoder has several inputs: with one
    text column it refuses, and scikit-learn serves with the converter's reason."""
    X, y = splitting.features_and_target(NOTED[0].drop(columns="color"), "label", ["id"])
    model = models.build_pipeline(
        "cand", {"model": "logistic_regression"}, features=X, feature_params={"max_categories": 4},
        task="classification", seed=0,
    ).fit(X, y)  # fmt: skip
    onnx_bytes, record = compile_noted(model)
    assert onnx_bytes is None and record["runtime"] == "sklearn"
    assert record["reason"].startswith("conversion failed: NotImplementedError: Infrequent categories")


def test_encoders_that_treat_unseen_values_differently_are_not_compiled():
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    X, y = splitting.features_and_target(NOTED[0], "label", ["id"])
    mixed = ColumnTransformer(
        [
            ("color", OneHotEncoder(handle_unknown="ignore"), ["color"]),
            ("note", OneHotEncoder(handle_unknown="infrequent_if_exist"), ["note"]),
        ]
    )
    from sklearn.pipeline import Pipeline

    model = Pipeline([("pre", mixed), ("model", LogisticRegression())]).fit(X[["color", "note"]], y)
    onnx_bytes, record = compile_noted(model)
    assert onnx_bytes is None
    assert (
        record["reason"]
        == "one-hot encoders with different handle_unknown: ['ignore', 'infrequent_if_exist']"
    )


def test_a_new_compiler_revision_repackages_the_same_champion(monkeypatch):
    """A bento holding a graph compiled before a fix (here: unseen categories) is not reused."""
    from pipelines.release import package

    params = {**PARAMS, "paths": {**PARAMS["paths"], "contract": str(REPO / PARAMS["paths"]["contract"])}}
    before = package.serving_spec(params)
    assert package.serving_spec(params) == before
    monkeypatch.setattr(compilation, "REVISION", compilation.REVISION + 1)
    assert package.serving_spec(params) != before


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_bad_pinning_setting_is_refused_before_anything_is_packaged(value):
    """`bentoml serve` would refuse it at start: packaging refuses it first, naming the key."""
    from pipelines.core.errors import ParamsError
    from pipelines.release import package

    params = {**PARAMS, "paths": {**PARAMS["paths"], "contract": str(REPO / PARAMS["paths"]["contract"])}}
    params = {**params, "serving": {**params["serving"], "pin_workers": value}}
    with pytest.raises(ParamsError, match=r"serving\.pin_workers"):
        package.serving_spec(params)


def test_a_pinning_change_repackages_the_same_champion():
    from pipelines.release import package

    params = {**PARAMS, "paths": {**PARAMS["paths"], "contract": str(REPO / PARAMS["paths"]["contract"])}}
    specs = {
        value: package.serving_spec({**params, "serving": {**params["serving"], "pin_workers": value}})
        for value in ("auto", True, False)
    }
    assert len(set(specs.values())) == 3, specs
