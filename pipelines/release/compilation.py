"""Compile the champion to ONNX at packaging time, and prove it answers like the original.

`make package` calls `compile_model`. The compiled graph is served only if, on the whole holdout
and through the exact feed the service uses, it gives:
  classification  the same label on at least `min_label_agreement` of the rows, and the primary
                  metric within `max_metric_delta` of the scikit-learn pipeline's;
  regression      every prediction within `max_relative_error`, or the metric within `max_metric_delta`.
Otherwise the scikit-learn pipeline serves, and the record says why. The record (parity figures,
converter versions, reason) goes into the bento model's meta.json and onto the MLflow run.

Parity is checked twice: on the holdout as it is, and on the holdout with each text column in
turn set to a value no encoder has seen (`unseen_rows`), since a new free-text value is what a
live record brings and the holdout never does. Both must pass.

Three converter gaps are bridged here rather than given up on:
  - skl2onnx cannot impute text with NaN as the missing marker. Every leading SimpleImputer is
    taken out of the graph and its fitted value goes into the feed (`fill`): the same value
    scikit-learn would have put there.
  - skl2onnx 1.20 writes Python booleans into the integer attribute of tree nodes, which
    protobuf 6+ refuses, so histogram gradient boosting failed to convert. `_int_missing_tracks`
    casts them.
  - skl2onnx writes `zeros=0` into the ONNX OneHotEncoder unless scikit-learn's encoder says
    handle_unknown="ignore", so onnxruntime fails the whole call on an unseen category, where
    scikit-learn's "infrequent_if_exist" scores it. `unknowns_as_sklearn` fixes the graph itself,
    so the request path pays nothing for it.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from pipelines.modeling import metrics
from pipelines.serving.runtimes import CompiledRuntime, model_outputs

Converter = Callable[[Any, list[tuple[str, Any]]], bytes]

# Part of the serving spec (`package.serving_spec`): raise it whenever the same model would now
# compile to another graph or verdict, so `make package` replaces bentos holding the old one.
# 2: unseen categories scored as scikit-learn scores them, and checked in parity.
REVISION = 2


class NotCompiled(Exception):
    """Why a model was not compiled or not verified; the scikit-learn pipeline serves instead."""


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import skl2onnx
    import sklearn

    return {
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "scikit-learn": sklearn.__version__,
    }


def without_imputers(model: Any) -> tuple[Any, dict[str, Any]]:
    """A copy of Pipeline(ColumnTransformer, estimator) without the branches' leading imputers,
    and each affected column's fitted fill value."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    if not (isinstance(model, Pipeline) and isinstance(model[0], ColumnTransformer)):
        raise NotCompiled(f"only Pipeline(ColumnTransformer, estimator) compiles, not {type(model).__name__}")
    model = copy.deepcopy(model)
    fills: dict[str, Any] = {}
    for _, branch, columns in model[0].transformers_:
        if not isinstance(branch, Pipeline) or len(branch.steps) < 2:
            continue
        imputer = branch.steps[0][1]
        if not isinstance(imputer, SimpleImputer) or imputer.add_indicator:
            continue
        if not (isinstance(imputer.missing_values, float) and np.isnan(imputer.missing_values)):
            continue
        for column, value in zip(columns, imputer.statistics_, strict=True):
            fills[column] = value.item() if isinstance(value, np.generic) else value
        branch.steps = branch.steps[1:]
    return model, fills


def graph_inputs(sample: pd.DataFrame, columns: list[str], fills: dict[str, Any]) -> list[dict[str, Any]]:
    """One graph input per raw column: its name, element type and fill for a missing value."""
    inputs = []
    for column in columns:
        values = sample[column]
        if pd.api.types.is_bool_dtype(values):
            raise NotCompiled(f"column '{column}' holds booleans, which the ONNX encoders do not take")
        if pd.api.types.is_numeric_dtype(values):
            kind = "float"
        elif values.dropna().map(type).eq(str).all():
            kind = "string"
        else:
            raise NotCompiled(f"column '{column}' mixes value types")
        inputs.append({"name": column, "type": kind, "fill": fills.get(column)})
    return inputs


def _int_missing_tracks(convert: Callable) -> Callable:
    """Run `convert` with tree nodes' missing-value flags cast to int (see the module note)."""
    import skl2onnx.common.tree_ensemble as tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    def patched(*args: Any, **kwargs: Any) -> Any:
        tree_ensemble.add_node = add_node
        try:
            return convert(*args, **kwargs)
        finally:
            tree_ensemble.add_node = original

    return patched


def to_onnx(model: Any, inputs: list[dict[str, Any]]) -> bytes:
    """skl2onnx's conversion at the newest opset it was tested with; probabilities as a tensor."""
    from skl2onnx import convert_sklearn, get_latest_tested_opset_version
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    types = {"float": FloatTensorType, "string": StringTensorType}
    initial = [(i["name"], types[i["type"]]([None, 1])) for i in inputs]
    from sklearn.preprocessing import StandardScaler

    options: dict[int, dict[str, Any]] = {}
    if hasattr(model[-1], "predict_proba"):
        options[id(model[-1])] = {"zipmap": False}
    for _, branch, _ in model[0].transformers_:
        for step in [s for _, s in branch.steps] if hasattr(branch, "steps") else [branch]:
            if isinstance(step, StandardScaler):
                # Scale in double, as scikit-learn does: float32 scaling moved values that sit
                # exactly on a tree's threshold to its other side.
                options[id(step)] = {"div": "div_cast"}
    onnx_model = _int_missing_tracks(convert_sklearn)(
        model, initial_types=initial, target_opset=get_latest_tested_opset_version(), options=options or None
    )
    unknowns_as_sklearn(onnx_model.graph, unknown_policy(model))
    return onnx_model.SerializeToString()


# What scikit-learn's OneHotEncoder gives an unseen category, by handle_unknown:
#   error                       raises (so does the graph as converted: zeros=0);
#   ignore                      all zeros, the infrequent column included;
#   infrequent_if_exist, warn   the infrequent column if the feature has one, else all zeros.
BUCKET_POLICIES = ("infrequent_if_exist", "warn")


def unknown_policy(model: Any) -> str:
    """The one handle_unknown of the model's OneHotEncoders ("error" if there is none, which
    leaves the graph as converted). The graph's encoder nodes cannot be told apart by the
    scikit-learn encoder they came from, so mixed policies are not compiled."""
    policies = {encoder.handle_unknown for encoder in one_hot_encoders(model)}
    if len(policies) > 1:
        raise NotCompiled(f"one-hot encoders with different handle_unknown: {sorted(policies)}")
    return policies.pop() if policies else "error"


def unknowns_as_sklearn(graph: Any, policy: str) -> None:
    """Make every ONNX OneHotEncoder in `graph` treat an unseen category as scikit-learn does.

    Unseen values encode as zeros (`zeros=1`) instead of failing the call. Where skl2onnx sums a
    feature's infrequent categories into one column (OneHotEncoder -> Split -> ReduceSum over the
    second part), that column becomes 1 - (sum of the frequent columns) under a bucket policy: 1
    for a known infrequent value, as before, and now 1 for an unseen one too, as in scikit-learn.
    """
    if policy == "error":
        return
    import onnx
    from onnx import helper

    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in [n for n in graph.node if n.op_type == "OneHotEncoder"]:
        zeros = next((a for a in node.attribute if a.name == "zeros"), None)
        if zeros is None:
            node.attribute.append(helper.make_attribute("zeros", 1))
        else:
            zeros.i = 1
        splits = [c for c in consumers.get(node.output[0], []) if c.op_type == "Split"]
        if policy not in BUCKET_POLICIES or not splits:
            continue
        sums = [c for c in consumers.get(splits[0].output[1], []) if c.op_type == "ReduceSum"]
        if len(splits) != 1 or len(sums) != 1 or len(splits[0].output) != 2:
            raise NotCompiled("the one-hot encoder's infrequent column has an unexpected graph shape")
        reduce_sum, frequent = sums[0], splits[0].output[0]
        bucket, one = reduce_sum.output[0], f"{reduce_sum.output[0]}_one"
        reduce_sum.input[0], reduce_sum.output[0] = frequent, f"{bucket}_frequent"
        graph.initializer.append(helper.make_tensor(one, onnx.TensorProto.FLOAT, [], [1.0]))
        position = list(graph.node).index(reduce_sum) + 1  # nodes stay in topological order
        graph.node.insert(
            position, helper.make_node("Sub", [one, reduce_sum.output[0]], [bucket], name=f"{bucket}_Sub")
        )


def parity(
    task: str,
    y_true: pd.Series,
    reference: np.ndarray,
    compiled: np.ndarray,
    classes: list[Any],
    positive: Any,
    metric: str,
    bounds: dict[str, float],
) -> dict[str, Any]:
    """Agreement figures of the compiled scores with the scikit-learn ones, and whether they pass."""
    compiled = compiled.astype(float).reshape(reference.shape)
    if task == "classification":
        labels = np.asarray(classes, dtype=object)
        before = metrics.classification_scores(y_true, reference, labels, positive)[metric]
        with warnings.catch_warnings():  # float32 probabilities sum to 1 within 1e-7 only
            warnings.simplefilter("ignore", UserWarning)
            after = metrics.classification_scores(y_true, compiled, labels, positive)[metric]
        agreement = float(np.mean(reference.argmax(axis=1) == compiled.argmax(axis=1)))
        figures = {
            "label_agreement": agreement,
            "max_abs_probability_diff": float(np.abs(compiled - reference).max()),
        }
    else:
        before = metrics.regression_scores(y_true, reference)[metric]
        after = metrics.regression_scores(y_true, compiled)[metric]
        scale = np.maximum(np.abs(reference), np.finfo(float).tiny)
        figures = {"max_relative_error": float(np.max(np.abs(compiled - reference) / scale))}
    delta = abs(after - before)
    figures.update(
        {
            "rows": len(reference),
            "metric": metric,
            "metric_sklearn": before,
            "metric_onnx": after,
            "metric_delta": delta,
        }
    )
    metric_ok = delta <= bounds["max_metric_delta"]
    metric_miss = f"{metric} differs by {delta:.4g} > {bounds['max_metric_delta']}"
    if task == "classification":
        misses = [] if metric_ok else [metric_miss]
        if agreement < bounds["min_label_agreement"]:
            misses.insert(0, f"labels agree on {agreement:.4%} < {bounds['min_label_agreement']:.2%}")
    elif figures["max_relative_error"] <= bounds["max_relative_error"] or metric_ok:
        misses = []
    else:
        misses = [f"predictions differ by up to {figures['max_relative_error']:.3g} relative "
                  f"> {bounds['max_relative_error']}, and {metric_miss}"]  # fmt: skip
    return {**figures, "passed": not misses, "misses": misses}


def one_hot_encoders(model: Any) -> list[Any]:
    """The OneHotEncoders inside a Pipeline(ColumnTransformer, estimator)'s branches."""
    from sklearn.preprocessing import OneHotEncoder

    found = []
    for _, branch, _ in model[0].transformers_:
        for step in [s for _, s in branch.steps] if hasattr(branch, "steps") else [branch]:
            if isinstance(step, OneHotEncoder):
                found.append(step)
    return found


def unseen_value(model: Any, X: pd.DataFrame) -> str:
    """A text value that no encoder learned and no holdout row holds."""
    taken = {str(v) for e in one_hot_encoders(model) for values in e.categories_ for v in values}
    taken.update(str(v) for column in X.columns for v in X[column].dropna().unique())
    value = "<never seen>"
    while value in taken:
        value += "!"
    return value


def unseen_rows(
    X: pd.DataFrame, y: pd.Series, columns: list[str], value: str
) -> tuple[pd.DataFrame, pd.Series]:
    """The holdout once per text column, with that column set to `value`: every row meets an
    unseen category in each column, one column at a time, as a live record would."""
    frames = [X.assign(**{column: value}) for column in columns]
    return pd.concat(frames, ignore_index=True), pd.concat([y] * len(columns), ignore_index=True)


def scored(path: CompiledRuntime, model: Any, X: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(compiled scores through the service's request feed, scikit-learn's scores) of `X`."""
    import json

    # The exact records the service would receive: through JSON, missing values as null.
    records = json.loads(X.to_json(orient="records"))
    try:
        served = path.run(path.record_feeds(records))
        batched = path.run(path.frame_feeds(X))
    except Exception as exc:
        raise NotCompiled(
            f"onnxruntime could not run it: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from None
    if not np.array_equal(served, batched):
        raise NotCompiled("the batch feed and the request feed disagree")
    try:
        reference = model_outputs(model, X, task)
    except ValueError as exc:
        raise NotCompiled(f"scikit-learn cannot score it: {str(exc).splitlines()[0][:300]}") from None
    return served, reference


def compile_model(
    model: Any,
    holdout: pd.DataFrame,
    *,
    target: str,
    task: str,
    positive: Any,
    metric: str,
    bounds: dict[str, float],
    convert: Converter = to_onnx,
) -> tuple[bytes | None, dict[str, Any]]:
    """(the verified ONNX graph or None, the record of what was tried and measured)."""
    record: dict[str, Any] = {"runtime": "sklearn", "reason": None, "bounds": bounds, "versions": versions()}
    features = list(model.feature_names_in_)
    X, y = holdout[features], holdout[target]
    classes = [c.item() if hasattr(c, "item") else c for c in getattr(model, "classes_", [])]
    try:
        stripped, fills = without_imputers(model)
        inputs = graph_inputs(X, features, fills)
        try:
            onnx_bytes = convert(stripped, inputs)
        except NotCompiled:
            raise
        except Exception as exc:  # the converter's own errors are many and unlisted
            raise NotCompiled(
                f"conversion failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            ) from None
        try:
            path = CompiledRuntime(onnx_bytes, inputs, task)
        except Exception as exc:
            raise NotCompiled(
                f"onnxruntime could not load it: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            ) from None
        served, reference = scored(path, model, X, task)
        figures = parity(task, y, reference, served, classes, positive, metric, bounds)
        record["parity"] = figures
        text = [i["name"] for i in inputs if i["type"] == "string"]
        if text:
            value = unseen_value(model, X)
            X_unseen, y_unseen = unseen_rows(X, y, text, value)
            served, reference = scored(path, model, X_unseen, task)
            unseen = parity(task, y_unseen, reference, served, classes, positive, metric, bounds)
            figures["unseen"] = {**unseen, "columns": text}
            figures["misses"] = figures["misses"] + [f"with unseen values: {m}" for m in unseen["misses"]]
            figures["passed"] = figures["passed"] and unseen["passed"]
        if not figures["passed"]:
            raise NotCompiled("parity missed: " + "; ".join(figures["misses"]))
    except NotCompiled as exc:
        record["reason"] = str(exc)
        return None, record
    record.update({"runtime": "onnx", "inputs": inputs, "sha256": hashlib.sha256(onnx_bytes).hexdigest()})
    return onnx_bytes, record
