"""The ways a packaged model computes its scores, fastest first.

  compiled  (`CompiledRuntime`) the ONNX graph `make package` compiled and verified on the holdout,
            fed straight from validated records: no DataFrame, no scikit-learn per-call overhead;
  arrays    (`ArrayRuntime`) the fitted scikit-learn pipeline's branches on plain arrays;
  frame     (`model_outputs` on `frame(...)`) the fitted pipeline on a DataFrame, which every
            model supports.

`bundle.LoadedModel.runtime` names the one that answers.
"""

from __future__ import annotations

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
