"""Compile a tree-ensemble champion to a shared library at packaging time, and prove it answers
like the original.

`make package` calls `compile_native` beside the ONNX compile (compilation.py). For a
Pipeline(ColumnTransformer, tree ensemble), the local gcc builds `model.so`:

- a RandomForest or ExtraTrees (one output) or a GradientBoosting: the forest kernel
  (`forest_kernel.py`): the fitted trees exported as flat arrays, embedded in a fixed committed C
  kernel (`kernels/forest.c`), built in about a second, answers bit for bit scikit-learn's;
- a histogram gradient boosting: treelite reads the fitted trees and tl2cgen writes them as C.

It serves only if, on the whole holdout and on the holdout with unseen text values, it passes the
same parity rule as the ONNX graph (`compilation.parity`, same bounds), through both the request
feed and the batch feed. Otherwise the next runtime serves (ONNX, then scikit-learn's arrays, then
its frame) and the record says why.

The library is never taken from the registry: it is built here, from the skops bytes the gate's
digest verified, and its SHA-256 goes into meta.json beside the other files' (bundle.py).

The ColumnTransformer runs in numpy (`runtimes.FastTransform`) when it is made of the project's
steps and gives scikit-learn's matrix bit for bit on the holdout; otherwise through scikit-learn.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.release import compilation, forest_kernel
from pipelines.release.compilation import NotCompiled
from pipelines.serving.runtimes import NativeRuntime, frame, model_outputs

# Part of the serving spec (`package.serving_spec`): raise it whenever the same model would now
# build another library or verdict, so `make package` replaces bundles holding the old one.
# 2: random forests, extra trees and gradient boosting are built by the forest kernel, not tl2cgen.
REVISION = 2
COMPILER = "gcc"
# tl2cgen settings (histogram gradient boosting only, since REVISION 2), measured on the
# project's forest (200 trees, depth 10, 95k nodes) and hgb on this 2-core box (bench/trees.py): one C file took over 5 min of gcc at -O3 (1.7 GB); 8 files
# at -O1 about 100 s under load, -O0 43 s but half the speed. `quantize` compares integer
# threshold indices: faster on the shallow trees of gradient boosting, the same answers.
# annotate_branch (branch hints from the training data) did not help measurably (README).
PARALLEL_FILES = 8
OPTIMIZE = "-O1"
QUANTIZE = 1


def tree_kind(estimator: Any) -> str | None:
    """'float32' for scikit-learn's DecisionTree-based ensembles (they compare float32 features),
    'float64' for histogram gradient boosting, None for what is not a tree ensemble."""
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

    float32 = (
        RandomForestClassifier,
        RandomForestRegressor,
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
    )
    if isinstance(estimator, float32):
        return "float32"
    if isinstance(estimator, HistGradientBoostingClassifier | HistGradientBoostingRegressor):
        return "float64"
    return None


def engine(estimator: Any) -> str:
    """What builds the library: the forest kernel, or tl2cgen for the other tree ensembles."""
    return "forest-kernel" if forest_kernel.supports(estimator) else "tl2cgen"


def versions(estimator: Any) -> dict[str, str]:
    found: dict[str, Any] = {"engine": engine(estimator)}
    if found["engine"] == "forest-kernel":
        found["forest_kernel"] = forest_kernel.VERSION
    else:
        import tl2cgen
        import treelite

        found.update({"treelite": treelite.__version__, "tl2cgen": tl2cgen.__version__})
    try:
        first = subprocess.run([COMPILER, "--version"], capture_output=True, text=True, timeout=30).stdout
        found[COMPILER] = first.splitlines()[0] if first else "unknown"
    except (OSError, subprocess.SubprocessError):
        found[COMPILER] = "missing"
    return found


def build_library(estimator: Any) -> bytes:
    """The estimator's trees as a shared library's bytes: the forest kernel with the trees as
    data, or (other ensembles) treelite import, tl2cgen C, gcc."""
    if shutil.which(COMPILER) is None:
        raise NotCompiled(f"no C compiler ('{COMPILER}') on PATH to build the native library")
    if forest_kernel.supports(estimator):
        return forest_kernel.build(estimator, COMPILER)
    import tl2cgen
    import treelite

    try:
        trees = treelite.sklearn.import_model(estimator)
    except Exception as exc:
        raise NotCompiled(f"treelite could not read it: {type(exc).__name__}: {_first(exc)}") from None
    with tempfile.TemporaryDirectory(prefix="native-") as folder:
        library = Path(folder) / "model.so"
        # tl2cgen prints its progress with print() and passes treelite's notes as warnings (its
        # bundled treelite reads 4.8's checkpoint with a "newer version" note): neither may reach
        # the command's output, whose first line is its result.
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tl2cgen.export_lib(
                    trees,
                    toolchain=COMPILER,
                    libpath=library,
                    params={"parallel_comp": PARALLEL_FILES, "quantize": QUANTIZE},
                    options=[OPTIMIZE],
                )
        except Exception as exc:
            raise NotCompiled(f"tl2cgen could not build it: {type(exc).__name__}: {_first(exc)}") from None
        return library.read_bytes()


def _first(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]


def fast_transform_exact(runtime: NativeRuntime, model: Any, X: pd.DataFrame) -> bool:
    """Whether the numpy transform gives scikit-learn's matrix bit for bit: on the frame, and on
    the records the service would receive (through JSON, which rounds numbers, so against
    scikit-learn's transform of those same records)."""
    import json

    if runtime.fast is None:
        return False
    records = json.loads(X.to_json(orient="records"))
    pairs = ((runtime.fast.frame(X), X), (runtime.fast.records(records), frame(records, list(X.columns))))
    return all(np.array_equal(got, np.asarray(model[0].transform(rows), dtype=float)) for got, rows in pairs)


def scored(runtime: NativeRuntime, model: Any, X: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(native scores through the request feed, scikit-learn's scores) of `X`; the batch feed,
    given the same (JSON-rounded) values as a frame, must give the request feed's scores exactly."""
    import json

    records = json.loads(X.to_json(orient="records"))
    try:
        served = runtime.run(runtime.matrix_of_records(records, list(X.columns)))
        batched = runtime.run(runtime.matrix_of_frame(frame(records, list(X.columns))))  # same values
    except Exception as exc:
        raise NotCompiled(
            f"the native library could not run it: {type(exc).__name__}: {_first(exc)}"
        ) from None
    if not np.array_equal(served, batched):
        raise NotCompiled("the native batch feed and the request feed disagree")
    return served, model_outputs(model, X, task)


def verified(
    runtime: NativeRuntime, model: Any, X: pd.DataFrame, y: pd.Series, task: str, check: dict[str, Any]
) -> dict[str, Any]:
    """The parity figures of `runtime` on the holdout and on its unseen-value copy; raises
    NotCompiled when they miss (compilation.parity's rule and bounds)."""
    classes = [c.item() if hasattr(c, "item") else c for c in getattr(model, "classes_", [])]
    served, reference = scored(runtime, model, X, task)
    figures = compilation.parity(task, y, reference, served, classes, **check)
    text = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
    if text:
        X_unseen, y_unseen = compilation.unseen_rows(X, y, text, compilation.unseen_value(model, X))
        served, reference = scored(runtime, model, X_unseen, task)
        unseen = compilation.parity(task, y_unseen, reference, served, classes, **check)
        figures["unseen"] = {**unseen, "columns": text}
        figures["misses"] = figures["misses"] + [f"with unseen values: {m}" for m in unseen["misses"]]
        figures["passed"] = figures["passed"] and unseen["passed"]
    if not figures["passed"]:
        raise NotCompiled("parity missed: " + "; ".join(figures["misses"]))
    return figures


def compile_native(
    model: Any,
    holdout: pd.DataFrame,
    *,
    target: str,
    task: str,
    positive: Any,
    metric: str,
    bounds: dict[str, float],
) -> tuple[bytes | None, dict[str, Any]]:
    """(the verified library's bytes or None, the record of what was tried and measured).

    The record's runtime is "native" (the library serves), "numpy" (no library, but the numpy
    transform is exact: the scikit-learn estimator scores its matrix) or None (neither: the ONNX
    graph or scikit-learn serves). `reason` says why there is no library; `numpy_reason` why
    not the numpy runtime either."""
    record: dict[str, Any] = {"runtime": None, "reason": None, "bounds": bounds}
    estimator = model.steps[-1][1] if hasattr(model, "steps") else model
    kind = tree_kind(estimator)
    features = list(getattr(model, "feature_names_in_", []))
    X, y = holdout[features], holdout[target]
    check = {"positive": positive, "metric": metric, "bounds": bounds}
    library = None
    try:
        if kind is None:
            raise NotCompiled(f"not a tree ensemble ({type(estimator).__name__}): no native library")
        record["versions"] = versions(estimator)
        library = build_library(estimator)
        try:
            runtime = NativeRuntime(library, model, task, threads=0, float32_input=kind == "float32")
        except Exception as exc:
            raise NotCompiled(
                f"the native library could not be loaded: {type(exc).__name__}: {_first(exc)}"
            ) from None
        exact = fast_transform_exact(runtime, model, X)
        if not exact:
            runtime.fast = None  # scikit-learn's own transform, then
        record["parity"] = verified(runtime, model, X, y, task, check)
        record.update(
            {
                "runtime": "native",
                "engine": engine(estimator),
                "input": kind,
                "transform": "numpy" if exact else "scikit-learn",
                "sha256": hashlib.sha256(library).hexdigest(),
            }
        )
        return library, record
    except NotCompiled as exc:
        record["reason"] = str(exc)
    try:
        runtime = NativeRuntime(None, model, task)
        if not fast_transform_exact(runtime, model, X):
            raise NotCompiled("the numpy transform does not give scikit-learn's matrix bit for bit")
        record["parity"] = verified(runtime, model, X, y, task, check)
        record.update({"runtime": "numpy", "transform": "numpy"})
    except NotCompiled as exc:
        record["numpy_reason"] = str(exc)
    return None, record
