"""What the BentoML service needs: a packaged model, its request schema, and its answers.

Kept free of MLflow, DVC and pandera, so that a bento carries only scikit-learn, onnxruntime,
pandas, skops and pydantic. The request schema is generated from the data contract's field
specs, which `make package` writes into the model's meta.json.

A model answers through the fastest path it has, in this order:
  compiled  the ONNX graph `make package` compiled and verified on the holdout (pipelines/compile.py),
            fed straight from validated records: no DataFrame, no scikit-learn per-call overhead;
  arrays    the fitted scikit-learn pipeline's branches on plain arrays (no DataFrame);
  frame     the fitted pipeline on a DataFrame, which every model supports.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

MODEL_NAME = "tabular-champion"  # the champion's name in the BentoML model store
MODEL_FILE = "model.skops"
COMPILED_FILE = "model.onnx"
META_FILE = "meta.json"
log = logging.getLogger("tabular_mlops.serving")
DEFAULT_LIMITS = {
    "max_records": 1000,
    "max_body_bytes": 1_048_576,
    "max_string_length": 256,
    "max_queue_rows": 4096,
}


def read_meta(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / META_FILE).read_text())


def service_options(meta: dict[str, Any]) -> dict[str, Any]:
    """BentoML service settings from params.yaml's `serving` section, packaged with the model."""
    settings = meta.get("service") or {}
    options: dict[str, Any] = {"workers": int(settings.get("workers", 1))}
    if not settings.get("access_log", True):
        options["logging"] = {"access": {"enabled": False}}
    if not settings.get("trace_requests", False):
        # OpenTelemetry's ASGI middleware cost ~0.35 ms of CPU per request here, a third of a
        # prediction's, even with BentoML's default sample rate of 0, which exports no span.
        options["tracing"] = {"excluded_urls": ["/predict", "/empty"]}
    return options


def _field_type(spec: dict[str, Any], max_string_length: int) -> Any:
    """A pydantic type that enforces one contract column: its type, range and allowed values."""
    kind = spec["type"]
    bounds = {k: v for k, v in (("ge", spec.get("minimum")), ("le", spec.get("maximum"))) if v is not None}
    if kind == "integer":
        return Annotated[int, Field(strict=True, **bounds)]
    if kind == "number":
        return Annotated[float, Field(allow_inf_nan=False, **bounds)]
    if kind == "boolean":
        return Annotated[bool, Field(strict=True)]
    if spec.get("allowed"):
        return Literal[tuple(spec["allowed"])]
    return Annotated[str, StringConstraints(max_length=max_string_length)]


def record_model(
    fields: dict[str, dict], optional: dict[str, dict], max_string_length: int
) -> type[BaseModel]:
    """One record: every feature, required unless nullable; the optional (id) columns; no others."""
    definitions: dict[str, Any] = {}
    for name, spec in fields.items():
        kind = _field_type(spec, max_string_length)
        definitions[name] = (kind | None, None) if spec["nullable"] else (kind, ...)
    for name, spec in optional.items():
        definitions[name] = (_field_type(spec, max_string_length) | None, None)
    return create_model(
        "Record",
        __config__=ConfigDict(extra="forbid", strict=False, allow_inf_nan=False),
        **definitions,
    )


def request_model(record: type[BaseModel], max_records: int) -> type[BaseModel]:
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        records=(Annotated[list[record], Field(min_length=1, max_length=max_records)], ...),
    )


class PredictResponse(BaseModel):
    request_id: str
    model_version: str
    predictions: list[Any]
    probabilities: list[dict[str, float]] | None = Field(
        default=None, description="per record, each class's probability (classification only)"
    )


@dataclass(frozen=True)
class ArrayPath:
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


def array_path(model: Any) -> ArrayPath | None:
    """The array path of a Pipeline(ColumnTransformer, estimator), or None for other shapes."""
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
    return ArrayPath(blocks=blocks, estimator=model[-1])


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


class CompiledPath:
    """The compiled champion in onnxruntime: one graph input per raw column, shape (n, 1).

    A missing value is filled in the feed with the fitted imputer's own value (`fill`), which is
    what the scikit-learn imputer would have put there; the graph holds the rest of the pipeline.
    """

    DTYPES: ClassVar[dict[str, Any]] = {"float": np.float32, "string": object}

    def __init__(
        self, onnx: bytes | str | Path, inputs: list[dict[str, Any]], task: str, threads: int = 1
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # A request is microseconds of work: one thread, as more would only add hand-offs. Batch
        # scoring passes threads=0 (every core), without spin-waiting, which a busy box punishes.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads != 1:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = str(onnx) if isinstance(onnx, Path) else onnx
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
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


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def compiled_path(path: Path, meta: dict[str, Any], threads: int = 1) -> CompiledPath | None:
    """The verified compiled model, or None: never one whose file is not the one that passed parity."""
    record = meta.get("compiled") or {}
    file = path / COMPILED_FILE
    if record.get("engine") != "onnx" or not file.is_file():
        return None
    if file_sha256(file) != record.get("sha256"):
        log.error("%s differs from the file that passed parity: serving scikit-learn", file)
        return None
    return CompiledPath(file, record["inputs"], meta["task"], threads)


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    version: str
    task: str
    features: list[str]
    classes: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: ArrayPath | None = None
    compiled: CompiledPath | None = None

    @property
    def engine(self) -> str:
        """What answers: onnx (the compiled graph), sklearn-arrays or sklearn-frame."""
        if self.compiled is not None:
            return "onnx"
        return "sklearn-arrays" if self.arrays is not None else "sklearn-frame"


def load(path: str | Path, threads: int = 1) -> LoadedModel:
    """A packaged model: skops file plus meta.json. skops only trusts the listed types.
    `threads` is the compiled model's thread count (0: every core)."""
    import skops.io

    path = Path(path)
    meta = read_meta(path)
    model = skops.io.load(path / MODEL_FILE, trusted=meta["trusted_types"])
    classes = [c.item() if hasattr(c, "item") else c for c in getattr(model, "classes_", [])]
    loaded = LoadedModel(
        model=model,
        version=str(meta["version"]),
        task=meta["task"],
        features=list(model.feature_names_in_),
        classes=classes,
        meta=meta,
        compiled=compiled_path(path, meta, threads),
    )
    if loaded.compiled is not None:
        return loaded  # the array path is the scikit-learn fallback's; no need to build and probe it
    loaded = replace(loaded, arrays=array_path(model))
    return loaded if _array_path_agrees(loaded) else replace(loaded, arrays=None)


def probe_records(fields: dict[str, dict]) -> list[dict[str, Any]]:
    """A few valid records spanning each field's range, allowed values and missing values."""
    rows = []
    for i in range(3):
        row = {}
        for name, spec in fields.items():
            if spec.get("allowed"):
                row[name] = spec["allowed"][i % len(spec["allowed"])]
            elif spec["type"] in ("integer", "number"):
                low, high = spec.get("minimum", 0), spec.get("maximum", 1)
                value = low + (high - low) * i / 2
                row[name] = round(value) if spec["type"] == "integer" else float(value)
            else:
                row[name] = "x"
            if spec["nullable"] and i == 2:
                row[name] = None
        rows.append(row)
    return rows


def _array_path_agrees(loaded: LoadedModel) -> bool:
    """Use the array path only if it gives the DataFrame path's answers on probe records."""
    if loaded.arrays is None or "fields" not in loaded.meta:
        return False
    rows = probe_records(loaded.meta["fields"])
    via_frame = model_scores(loaded.model, frame(rows, loaded.features), loaded.task)
    via_arrays = model_scores(loaded.arrays.estimator, loaded.arrays.transform(rows), loaded.task)
    return bool(np.allclose(via_frame, via_arrays, rtol=0, atol=1e-9))


def model_scores(model: Any, X: Any, task: str) -> np.ndarray:
    """Class probabilities (classification) or predictions of a scikit-learn model."""
    return model.predict_proba(X) if task == "classification" else model.predict(X)


def frame(records: list[dict[str, Any]], features: list[str]) -> pd.DataFrame:
    """Records as the model's input frame, in the model's column order (extra keys dropped)."""
    return pd.DataFrame.from_records(records, columns=features)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def record_scores(loaded: LoadedModel, records: list[dict[str, Any]]) -> np.ndarray:
    """Class probabilities (classification) or predictions, for validated records."""
    if loaded.compiled is not None:
        return loaded.compiled.run(loaded.compiled.record_feeds(records))
    import sklearn

    # Records are already validated against the contract: skip scikit-learn's own checks.
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        if loaded.arrays is not None:
            return model_scores(loaded.arrays.estimator, loaded.arrays.transform(records), loaded.task)
        return model_scores(loaded.model, frame(records, loaded.features), loaded.task)


def frame_scores(loaded: LoadedModel, X: pd.DataFrame) -> np.ndarray:
    """The same for a frame of validated rows (batch scoring): columns straight to arrays."""
    if loaded.compiled is not None:
        return loaded.compiled.run(loaded.compiled.frame_feeds(X))
    return model_scores(loaded.model, X[loaded.features], loaded.task)


def labels(loaded: LoadedModel, proba: np.ndarray) -> list[Any]:
    return [_plain(v) for v in np.asarray(loaded.classes, dtype=object)[proba.argmax(axis=1)]]


def answer_frame(loaded: LoadedModel, X: pd.DataFrame) -> tuple[list[Any], pd.DataFrame | None]:
    """Predictions for a frame, and for classification a frame of `probability_<class>` columns."""
    scores = frame_scores(loaded, X)
    if loaded.task != "classification":
        return scores.astype(float).ravel().tolist(), None
    columns = [f"probability_{c}" for c in loaded.classes]
    return labels(loaded, scores), pd.DataFrame(scores.astype(float), columns=columns).round(6)


def answer(
    loaded: LoadedModel, records: list[dict[str, Any]]
) -> tuple[list[Any], list[dict[str, float]] | None]:
    """Predictions, and class probabilities for classification, one per record."""
    scores = record_scores(loaded, records)
    if loaded.task != "classification":
        return scores.astype(float).ravel().tolist(), None
    names = [str(c) for c in loaded.classes]
    rounded = np.round(scores.astype(float), 6).tolist()
    return labels(loaded, scores), [dict(zip(names, row, strict=True)) for row in rounded]


def response_body(
    request_id: str, version: str, predictions: list[Any], probabilities: list[dict] | None
) -> dict[str, Any]:
    """The body of a /predict answer (PredictResponse's fields; probabilities for classification)."""
    body: dict[str, Any] = {"request_id": request_id, "model_version": version, "predictions": predictions}
    if probabilities is not None:
        body["probabilities"] = probabilities
    return body


def predict(loaded: LoadedModel, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The full answer to one request, as the service returns it."""
    return response_body(uuid.uuid4().hex, loaded.version, *answer(loaded, records))


def row_problems(frame: pd.DataFrame, fields: dict[str, dict], max_string_length: int) -> pd.Series:
    """The service's record rules, vectorised over a frame: per row, the first problem or None.

    Batch scoring uses this instead of validating rows one by one with the pydantic model; a
    test checks that both refuse exactly the same rows.
    """
    problems = pd.Series([None] * len(frame), index=frame.index, dtype=object)

    def flag(mask: pd.Series, text: str) -> None:
        problems.loc[mask & problems.isna()] = text

    for name, spec in fields.items():
        column = frame[name]
        missing = column.isna()
        if not spec["nullable"]:
            flag(missing, f"{name}: missing, and the contract says not nullable")
        present = ~missing
        kind = spec["type"]
        if kind in ("integer", "number"):
            numbers = (
                pd.to_numeric(column, errors="coerce")
                if not pd.api.types.is_numeric_dtype(column)
                else column
            )
            numbers = numbers.astype("float64")
            flag(present & numbers.isna(), f"{name}: not a number")
            flag(present & np.isinf(numbers), f"{name}: not a finite number")
            if kind == "integer":
                flag(present & numbers.notna() & (numbers % 1 != 0), f"{name}: not an integer")
            if "minimum" in spec:
                flag(present & (numbers < spec["minimum"]), f"{name}: below the minimum {spec['minimum']}")
            if "maximum" in spec:
                flag(present & (numbers > spec["maximum"]), f"{name}: above the maximum {spec['maximum']}")
        elif kind == "string":
            text = column.astype("string")
            if spec.get("allowed"):
                flag(present & ~text.isin(spec["allowed"]), f"{name}: not an allowed value")
            else:
                flag(
                    present & (text.str.len() > max_string_length), f"{name}: longer than {max_string_length}"
                )
    return problems
