"""The ways a packaged model computes its scores, fastest first.

  native    (`NativeRuntime`) a tree ensemble built into a shared library by `make package` (the
            forest kernel for random forests and gradient boosting, tl2cgen's C for histogram
            gradient boosting) and verified on the holdout; the ColumnTransformer's arithmetic
            runs in numpy (`FastTransform`), the trees in the library;
  compiled  (`CompiledRuntime`) the ONNX graph `make package` compiled and verified on the holdout,
            fed straight from validated records: no DataFrame, no scikit-learn per-call overhead;
  arrays    (`ArrayRuntime`) the fitted scikit-learn pipeline's branches on plain arrays;
  frame     (`model_outputs` on `frame(...)`) the fitted pipeline on a DataFrame, which every
            model supports.

`bundle.LoadedModel.runtime` names the one that answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd


def model_outputs(model: Any, X: Any, task: str) -> np.ndarray:
    """Class probabilities (classification) or predictions of a scikit-learn model."""
    return model.predict_proba(X) if task == "classification" else model.predict(X)


def frame(records: list[dict[str, Any]], features: list[str]) -> pd.DataFrame:
    """Records as the model's input frame, in the model's column order (extra keys dropped)."""
    return pd.DataFrame.from_records(records, columns=features)


@dataclass(frozen=True)
class ArrayRuntime:
    """The fitted pipeline taken apart: each ColumnTransformer branch on plain arrays, then the
    estimator. Same fitted objects, same numbers, without building a DataFrame per call."""

    blocks: list[tuple[Any, list[str], Any]]  # (fitted transformer, its columns, numpy dtype)
    estimator: Any

    def transform(self, records: list[dict[str, Any]]) -> np.ndarray:
        parts = []
        for transformer, columns, dtype in self.blocks:
            values = [[_missing_as_nan(r.get(c)) for c in columns] for r in records]
            parts.append(transformer.transform(np.array(values, dtype=dtype)))
        return np.hstack(parts)


def _missing_as_nan(value: Any) -> Any:
    return np.nan if value is None else value


def array_runtime(model: Any) -> ArrayRuntime | None:
    """The array runtime of a Pipeline(ColumnTransformer, estimator), or None for other shapes."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not (
        isinstance(model, Pipeline) and len(model.steps) == 2 and isinstance(model[0], ColumnTransformer)
    ):
        return None
    blocks = []
    for _, transformer, columns in model[0].transformers_:
        if transformer == "drop" or len(columns) == 0:
            continue
        if transformer == "passthrough" or not isinstance(columns[0], str):
            return None
        blocks.append((_nameless(transformer), list(columns), float if _all_numeric(transformer) else object))
    return ArrayRuntime(blocks=blocks, estimator=model[-1])


def _nameless(transformer: Any) -> Any:
    """A copy that takes plain arrays without warning: fitted on a frame, it would check names."""
    import copy

    clone = copy.deepcopy(transformer)
    for step in [s for _, s in clone.steps] if hasattr(clone, "steps") else [clone]:
        if hasattr(step, "feature_names_in_"):
            del step.feature_names_in_
    if hasattr(clone, "feature_names_in_"):
        del clone.feature_names_in_
    return clone


def _all_numeric(transformer: Any) -> bool:
    """Whether a fitted branch was fitted on numbers (its first step saw a float/int frame)."""
    first = transformer.steps[0][1] if hasattr(transformer, "steps") else transformer
    statistics = getattr(first, "statistics_", None)
    return statistics is not None and np.asarray(statistics).dtype.kind in "fiu"


class CompiledRuntime:
    """The compiled champion in onnxruntime: one graph input per raw column, shape (n, 1).

    A missing value is filled in the feed with the fitted imputer's own value (`fill`), which is
    what the scikit-learn imputer would have put there; the graph holds the rest of the pipeline.
    """

    DTYPES: ClassVar[dict[str, Any]] = {"float": np.float32, "string": object}

    def __init__(self, onnx: bytes, inputs: list[dict[str, Any]], task: str, threads: int = 1) -> None:
        """`onnx` is the graph's bytes, never a path: the caller verified exactly these bytes."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        # A request is microseconds of work: one thread, as more would only add hand-offs. Batch
        # scoring passes threads=0 (every core), without spin-waiting, which a busy box punishes.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads != 1:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if not isinstance(onnx, bytes):
            raise TypeError("CompiledRuntime takes the graph's verified bytes, not a path")
        self.session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        self.inputs = [(i["name"], self.DTYPES[i["type"]], i.get("fill")) for i in inputs]
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = "probabilities" if task == "classification" else outputs[0]
        if self.output not in outputs:
            raise ValueError(f"the compiled graph has no '{self.output}' output: {outputs}")

    def record_feeds(self, records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        feeds = {}
        for name, dtype, fill in self.inputs:
            values = [r.get(name) for r in records]
            if fill is not None and None in values:
                values = [fill if v is None else v for v in values]
            feeds[name] = np.array(values, dtype=dtype).reshape(-1, 1)
        return feeds

    def frame_feeds(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        feeds = {}
        for name, dtype, fill in self.inputs:
            column = frame[name]
            if fill is not None and column.hasnans:
                column = column.astype(object).where(column.notna(), fill)
            feeds[name] = column.to_numpy(dtype=dtype).reshape(-1, 1)
        return feeds

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output], feeds)[0]


class FastTransform:
    """A fitted ColumnTransformer of the project's steps (SimpleImputer, StandardScaler,
    OneHotEncoder) redone with whole-column numpy operations: the same arithmetic in the same
    order, so the same float64 matrix, at a fraction of scikit-learn's per-call cost. Packaging
    checks that it gives scikit-learn's matrix bit for bit (`native.py`)."""

    def __init__(self, blocks: list[tuple[str, list[str], dict[str, Any]]], width: int) -> None:
        self.blocks, self.width = blocks, width

    def frame(self, X: pd.DataFrame) -> np.ndarray:
        def text(column: str, index: pd.Index, positions: dict, fill: Any) -> np.ndarray:
            return _codes(X[column], index, fill)

        return self._transform(len(X), text, lambda cs: X[cs].to_numpy(dtype=float))

    def records(self, records: list[dict[str, Any]]) -> np.ndarray:
        # A few records (a request): a dict lookup per value; pandas' index lookup costs ~0.3 ms
        # a call, which is more than the whole tree ensemble for one record.
        def text(column: str, index: pd.Index, positions: dict, fill: Any) -> np.ndarray:
            values = [r.get(column) for r in records]
            if fill is not None:
                values = [fill if v is None or v != v else v for v in values]
            return np.array([positions.get(v, -1) for v in values], dtype=np.intp)

        def numbers(columns: list[str]) -> np.ndarray:
            rows = [[_missing_as_nan(r.get(c)) for c in columns] for r in records]
            return np.array(rows, dtype=float).reshape(len(records), len(columns))

        return self._transform(len(records), text, numbers)

    def _transform(self, n: int, text: Callable, numbers: Callable) -> np.ndarray:
        out = np.zeros((n, self.width))
        at = 0
        for kind, columns, spec in self.blocks:
            if kind == "numeric":
                values = numbers(columns)
                if spec["fill"] is not None:
                    values = np.where(np.isnan(values), spec["fill"], values)
                if spec["mean"] is not None:
                    values -= spec["mean"]
                if spec["scale"] is not None:
                    values /= spec["scale"]
                out[:, at : at + len(columns)] = values
                at += len(columns)
                continue
            rows = np.arange(n)
            for column, index, positions, lookup, width in zip(
                columns, spec["index"], spec["positions"], spec["lookup"], spec["widths"], strict=True
            ):
                # -1 (unseen) takes the lookup's last entry: the unseen value's column, if any
                hot = lookup[text(column, index, positions, spec["fill"])]
                seen = hot >= 0
                out[rows[seen], at + hot[seen]] = 1.0
                at += width
        return out


def _codes(values: Any, index: pd.Index, fill: Any) -> np.ndarray:
    """Each value's position in `index` (-1 if it is not there), a missing value as `fill`.

    A frame's text column goes through Arrow (pyarrow's index_in: ~10x faster than a hash
    lookup of Python strings on 50,000 rows); records, and values Arrow cannot take, through
    the index's own lookup. Both compare strings as scikit-learn's encoder does: by equality."""
    if isinstance(values, pd.Series) and index.inferred_type == "string":
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            column = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            column = None
        if column is not None and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            if fill is not None:
                column = pc.fill_null(column, pa.scalar(fill, column.type))
            codes = pc.index_in(column, value_set=pa.array(list(index), column.type))
            return pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.intp)
    values = np.asarray(values, dtype=object)
    if fill is not None:
        missing = pd.isna(values)
        if missing.any():
            values = np.where(missing, fill, values)
    return index.get_indexer(values)


def fast_transform(model: Any) -> FastTransform | None:
    """The FastTransform of a Pipeline(ColumnTransformer, estimator) of known steps, else None."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if not (
        isinstance(model, Pipeline) and len(model.steps) == 2 and isinstance(model[0], ColumnTransformer)
    ):
        return None
    blocks, width = [], 0
    for _, branch, columns in model[0].transformers_:
        if (isinstance(branch, str) and branch == "drop") or len(columns) == 0:
            continue
        steps = [s for _, s in branch.steps] if isinstance(branch, Pipeline) else [branch]
        if not columns or not all(isinstance(c, str) for c in columns) or not steps:
            return None
        fill = None
        if isinstance(steps[0], SimpleImputer):
            imputer = steps.pop(0)
            nan_marker = isinstance(imputer.missing_values, float) and np.isnan(imputer.missing_values)
            if not nan_marker or imputer.add_indicator:
                return None
            fill = imputer.statistics_
        if len(steps) == 1 and isinstance(steps[0], OneHotEncoder):
            spec = _one_hot_spec(steps[0], columns, fill)
            if spec is None:
                return None
            blocks.append(("text", list(columns), spec))
            width += sum(spec["widths"])
        elif len(steps) <= 1 and all(isinstance(s, StandardScaler) for s in steps):
            if fill is not None and fill.dtype.kind not in "fiu":
                return None
            scaler = steps[0] if steps else None
            blocks.append(
                (
                    "numeric",
                    list(columns),
                    {
                        "fill": None if fill is None else fill.astype(float),
                        "mean": scaler.mean_ if scaler is not None and scaler.with_mean else None,
                        "scale": scaler.scale_ if scaler is not None and scaler.with_std else None,
                    },
                )
            )
            width += len(columns)
        else:
            return None
    return FastTransform(blocks, width)


def _one_hot_spec(encoder: Any, columns: list[str], fill: Any) -> dict[str, Any] | None:
    """Per column: an index of its categories, and the output column of each (and of an unseen
    value, last), learned from the encoder itself on its own categories."""
    if encoder.drop_idx_ is not None or encoder.handle_unknown == "error" or encoder.sparse_output:
        return None
    if fill is not None and len({type(v) for v in fill}) > 1:
        return None
    widths = list(encoder._n_features_outs)
    longest = max(len(c) for c in encoder.categories_) + 1
    unseen = "\0<unseen>"
    probe = np.array(
        [[c[i] if i < len(c) else unseen for c in encoder.categories_] for i in range(longest)], dtype=object
    )
    import warnings

    with warnings.catch_warnings():  # unseen values warn under handle_unknown="warn"
        warnings.simplefilter("ignore")
        encoded = encoder.transform(probe)
    index, lookup, at = [], [], 0
    for j, categories in enumerate(encoder.categories_):
        part = encoded[:, at : at + widths[j]]
        at += widths[j]
        rows = [*range(len(categories)), len(categories)]  # each category, then an unseen value
        hot = np.array([int(part[r].argmax()) if part[r].sum() == 1 else -1 for r in rows])
        index.append(pd.Index(np.asarray(categories, dtype=object)))
        lookup.append(hot)
    positions = [{value: i for i, value in enumerate(categories)} for categories in index]
    return {
        "fill": None if fill is None else fill[0],
        "index": index,
        "positions": positions,
        "lookup": lookup,
        "widths": widths,
    }


class NativeRuntime:
    """A tree ensemble in a shared library built at packaging, after a FastTransform (or, if the
    pipeline has steps it does not know, the ColumnTransformer's own transform). The library is
    the forest kernel (random forests and gradient boosting: `forest_kernel.ForestKernel`, found
    by its symbol) or tl2cgen's (histogram gradient boosting). Without a library (`library` None: a linear model, or no compiler at packaging),
    the fitted scikit-learn estimator scores the FastTransform's matrix: the "numpy" runtime.

    The library's bytes are verified by the caller and loaded from a fresh private folder
    (`trust.private_copy`), never from the store's path. `float32_input`: scikit-learn's
    DecisionTree-based ensembles compare float32 features against their thresholds, so the
    matrix is rounded to float32 first, as scikit-learn rounds it."""

    def __init__(
        self,
        library: bytes | None,
        model: Any,
        task: str,
        threads: int = 1,
        float32_input: bool = False,
        fast: bool = True,
    ) -> None:
        import threading

        from pipelines.serving import trust

        self.predictor, self.kernel, self.estimator = None, None, model[-1]
        if library is not None:
            if not isinstance(library, bytes):
                raise TypeError("NativeRuntime takes the library's verified bytes, not a path")
            with trust.private_copy(library, "model.so") as path:
                self._load(path, threads)
        self.task, self.float32_input = task, float32_input
        self.preprocess = model[0]
        self.fast = fast_transform(model) if fast else None
        self.lock = threading.Lock()  # tl2cgen: one predict call at a time per predictor

    def _load(self, path: str, threads: int) -> None:
        import ctypes

        from pipelines.serving.forest_kernel import ForestKernel

        library = ctypes.CDLL(path)
        if hasattr(library, "forest_kernel_score"):
            self.kernel = ForestKernel(library, threads)
            return
        import tl2cgen

        # nthread None is tl2cgen's "every core"; it starts its threads once, here.
        self.predictor = tl2cgen.Predictor(path, nthread=threads or None)

    def matrix_of_frame(self, X: pd.DataFrame) -> np.ndarray:
        return self.fast.frame(X) if self.fast is not None else self._sklearn(X)

    def matrix_of_records(self, records: list[dict[str, Any]], features: list[str]) -> np.ndarray:
        if self.fast is not None:
            return self.fast.records(records)
        return self._sklearn(frame(records, features))

    def _sklearn(self, X: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.preprocess.transform(X), dtype=float)

    @property
    def name(self) -> str:
        return "native" if self.predictor is not None or self.kernel is not None else "numpy"

    def run(self, matrix: np.ndarray) -> np.ndarray:
        if self.kernel is not None:
            rows = np.asarray(matrix, dtype=np.float32)  # scikit-learn's own rounding
            if not np.isnan(rows).any():  # the kernel does not place NaN: scikit-learn does
                scores = self.kernel.score(rows, self.estimator)
                return scores if self.task == "classification" else scores.ravel()
        if self.predictor is None:
            return self._estimator(matrix)
        import tl2cgen

        if self.float32_input:
            matrix = matrix.astype(np.float32).astype(np.float64)
        with self.lock:
            scores = np.asarray(self.predictor.predict(tl2cgen.DMatrix(matrix)))
        scores = scores.reshape(len(matrix), -1)
        if self.task == "classification" and scores.shape[1] == 1:
            scores = np.hstack([1.0 - scores, scores])  # binary: the positive class's probability
        return scores if self.task == "classification" else scores.ravel()

    def _estimator(self, matrix: np.ndarray) -> np.ndarray:
        import sklearn

        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            return model_outputs(self.estimator, matrix, self.task)
