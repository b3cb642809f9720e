"""A packaged model: what `make package` puts in the BentoML store, and how a worker loads it.

The bundle is a folder holding the skops file of the fitted scikit-learn pipeline, the compiled
ONNX graph if one passed parity, and meta.json: the request's field specs and limits, the
service settings, the version, lineage and metrics, and the compile record.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.serving.runtimes import (
    ArrayRuntime,
    CompiledRuntime,
    array_runtime,
    frame,
    model_outputs,
)
from pipelines.serving.schema import probe_records

MODEL_NAME = "tabular-champion"  # the champion's name in the BentoML model store
MODEL_FILE = "model.skops"
COMPILED_FILE = "model.onnx"
META_FILE = "meta.json"
log = logging.getLogger("tabular_mlops.serving")


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


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def compiled_runtime(path: Path, meta: dict[str, Any], threads: int = 1) -> CompiledRuntime | None:
    """The verified compiled model, or None: never one whose file is not the one that passed parity."""
    record = meta.get("compiled") or {}
    file = path / COMPILED_FILE
    if record.get("runtime") != "onnx" or not file.is_file():
        return None
    if file_sha256(file) != record.get("sha256"):
        log.error("%s differs from the file that passed parity: serving scikit-learn", file)
        return None
    return CompiledRuntime(file, record["inputs"], meta["task"], threads)


@dataclass(frozen=True)
class LoadedModel:
    """A loaded bundle: the fitted pipeline, its meta, and the fastest runtime that agrees with it."""

    model: Any
    version: str
    task: str
    features: list[str]
    classes: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: ArrayRuntime | None = None
    compiled: CompiledRuntime | None = None

    @property
    def runtime(self) -> str:
        """What answers: onnx (the compiled graph), sklearn-arrays or sklearn-frame."""
        if self.compiled is not None:
            return "onnx"
        return "sklearn-arrays" if self.arrays is not None else "sklearn-frame"

    def record_scores(self, records: list[dict[str, Any]]) -> np.ndarray:
        """Class probabilities (classification) or predictions, for validated records."""
        if self.compiled is not None:
            return self.compiled.run(self.compiled.record_feeds(records))
        import sklearn

        # Records are already validated against the contract: skip scikit-learn's own checks.
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            if self.arrays is not None:
                return model_outputs(self.arrays.estimator, self.arrays.transform(records), self.task)
            return model_outputs(self.model, frame(records, self.features), self.task)

    def frame_scores(self, X: pd.DataFrame) -> np.ndarray:
        """The same for a frame of validated rows (batch scoring): columns straight to arrays."""
        if self.compiled is not None:
            return self.compiled.run(self.compiled.frame_feeds(X))
        return model_outputs(self.model, X[self.features], self.task)


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
        compiled=compiled_runtime(path, meta, threads),
    )
    if loaded.compiled is not None:
        return loaded  # the array runtime is the scikit-learn fallback's: no need to build and probe it
    loaded = replace(loaded, arrays=array_runtime(model))
    return loaded if _arrays_agree(loaded) else replace(loaded, arrays=None)


def _arrays_agree(loaded: LoadedModel) -> bool:
    """Use the array runtime only if it gives the DataFrame's answers on probe records."""
    if loaded.arrays is None or "fields" not in loaded.meta:
        return False
    rows = probe_records(loaded.meta["fields"])
    via_frame = model_outputs(loaded.model, frame(rows, loaded.features), loaded.task)
    via_arrays = model_outputs(loaded.arrays.estimator, loaded.arrays.transform(rows), loaded.task)
    return bool(np.allclose(via_frame, via_arrays, rtol=0, atol=1e-9))
