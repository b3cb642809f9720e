"""A packaged model: what `make package` puts in the BentoML store, and how a worker loads it.

The bundle is a folder holding the skops file of the fitted scikit-learn pipeline, the compiled
ONNX graph if one passed parity, the native library of a tree ensemble if one passed parity
(model.so, built locally at packaging, never taken from the registry), and meta.json: the request's field specs and limits, the
service settings, the version, lineage and metrics, the compile record, and `digests`, the
SHA-256 of each model file. BentoML's own model.yaml beside them holds the model's labels, two
of which anchor the rest: meta.json's digest and model.skops's. Every file is verified before it
is used, from the bytes that are then loaded (`trust.read_verified`); a mismatch, or a bundle
packaged before digests existed, raises `trust.Untrusted`, and the service does not start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.serving import trust
from pipelines.serving.runtimes import (
    ArrayRuntime,
    CompiledRuntime,
    NativeRuntime,
    array_runtime,
    frame,
    model_outputs,
)
from pipelines.serving.schema import probe_records

MODEL_NAME = "tabular-champion"  # the champion's name in the BentoML model store
# The challenger's: packaged beside, never as the champion's `latest`, which batch scoring and a
# restarted service load (docs/rollout.md).
CHALLENGER_NAME = "tabular-challenger"
MODEL_FILE = "model.skops"
COMPILED_FILE = "model.onnx"
NATIVE_FILE = "model.so"  # the tree ensemble as a shared library, built at packaging (release/native.py)
META_FILE = "meta.json"
REFERENCE_FILE = "reference.json"  # the monitoring reference (pipelines/monitoring/reference.py); not served
MODEL_YAML = "model.yaml"  # BentoML's record of a stored model, with its labels
META_LABEL = "meta_sha256"  # labels written at packaging: meta.json's digest, and
SKOPS_LABEL = "model_sha256"  # model.skops's (the registry version's model.sha256 tag)


def describe(path: Path) -> str:
    """How errors name a stored model: tabular-champion:<version>, as `bentoml models list` does."""
    return f"packaged model {path.parent.name}:{path.name}"


def labels(path: Path) -> dict[str, str]:
    """The model's labels, from BentoML's model.yaml (read directly: no bentoml import needed)."""
    import yaml

    try:
        found = (yaml.safe_load((path / MODEL_YAML).read_text()) or {}).get("labels")
    except (OSError, yaml.YAMLError, AttributeError):
        found = None
    return found if isinstance(found, dict) else {}


def read_meta(path: str | Path) -> dict[str, Any]:
    """meta.json, verified against the model's label, with a `digests` entry for model.skops that
    agrees with the other label. A model packaged before digests existed is refused."""
    path = Path(path)
    what, tags = describe(path), labels(path)
    if not tags.get(META_LABEL) or not tags.get(SKOPS_LABEL):
        raise trust.Untrusted(f"{what} was packaged without file digests: run `make package` again")
    meta = json.loads(trust.read_verified(path / META_FILE, tags[META_LABEL], what))
    digests = meta.get("digests") if isinstance(meta, dict) else None
    if not isinstance(digests, dict) or digests.get(MODEL_FILE) != tags[SKOPS_LABEL]:
        raise trust.Untrusted(f"{what}: meta.json's digest of {MODEL_FILE} is not the one in its labels")
    return meta


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


def compiled_runtime(path: Path, meta: dict[str, Any], threads: int = 1) -> CompiledRuntime | None:
    """The compiled model if the compile record says one serves, from bytes verified against
    meta's digest (the graph that passed parity); None if scikit-learn serves. A missing or
    tampered graph raises `trust.Untrusted`: never a silent fall-back to another runtime."""
    record = meta.get("compiled") or {}
    if record.get("runtime") != "onnx":
        return None
    expected = (meta.get("digests") or {}).get(COMPILED_FILE)
    if expected != record.get("sha256"):
        raise trust.Untrusted(f"{describe(path)}: the compile record and meta's digests disagree")
    data = trust.read_verified(path / COMPILED_FILE, expected, describe(path))
    return CompiledRuntime(data, record["inputs"], meta["task"], threads)


def native_runtime(path: Path, model: Any, meta: dict[str, Any], threads: int = 1) -> NativeRuntime | None:
    """The native library if its record says it serves, loaded from bytes verified against meta's
    digest and copied to a fresh private folder (a library runs code when loaded); None
    otherwise. A missing or tampered library raises `trust.Untrusted`, never a silent fall-back."""
    record = meta.get("native") or {}
    if record.get("runtime") == "numpy":  # no library: the estimator on the numpy transform
        return NativeRuntime(None, model, meta["task"], threads, fast=True)
    if record.get("runtime") != "native":
        return None
    expected = (meta.get("digests") or {}).get(NATIVE_FILE)
    if expected != record.get("sha256"):
        raise trust.Untrusted(f"{describe(path)}: the native record and meta's digests disagree")
    data = trust.read_verified(path / NATIVE_FILE, expected, describe(path))
    return NativeRuntime(
        data,
        model,
        meta["task"],
        threads,
        float32_input=record.get("input") == "float32",
        fast=record.get("transform") == "numpy",
    )


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
    native: NativeRuntime | None = None

    @property
    def runtime(self) -> str:
        """What answers a request: onnx (the compiled graph), native (the tree library, when
        there is no graph), sklearn-arrays or sklearn-frame. The graph comes first here: for one
        record it answered in ~0.15 ms against the library's ~0.2 ms (hgb, bench note in
        release/native.py); a chunk is where the library wins (`batch_runtime`)."""
        if self.compiled is not None:
            return "onnx"
        if self.native is not None and self.native.name == "native":
            return "native"
        return "sklearn-arrays" if self.arrays is not None else "sklearn-frame"

    @property
    def batch_runtime(self) -> str:
        """What scores a frame (batch scoring): the native library, or the estimator on the numpy
        transform ("numpy", which beat the ONNX graph on 50,000-row chunks: bench/trees.py),
        else what answers a request."""
        return self.native.name if self.native is not None else self.runtime

    def record_scores(self, records: list[dict[str, Any]]) -> np.ndarray:
        """Class probabilities (classification) or predictions, for validated records."""
        if self.compiled is not None:
            return self.compiled.run(self.compiled.record_feeds(records))
        if self.native is not None and self.native.name == "native":
            return self.native.run(self.native.matrix_of_records(records, self.features))
        import sklearn

        # Records are already validated against the contract: skip scikit-learn's own checks.
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            if self.arrays is not None:
                return model_outputs(self.arrays.estimator, self.arrays.transform(records), self.task)
            return model_outputs(self.model, frame(records, self.features), self.task)

    def frame_scores(self, X: pd.DataFrame) -> np.ndarray:
        """The same for a frame of validated rows (batch scoring): columns straight to arrays."""
        if self.native is not None:
            return self.native.run(self.native.matrix_of_frame(X[self.features]))
        if self.compiled is not None:
            return self.compiled.run(self.compiled.frame_feeds(X))
        return model_outputs(self.model, X[self.features], self.task)


def load(path: str | Path, threads: int = 1) -> LoadedModel:
    """A packaged model: skops file plus meta.json, each verified against its recorded digest
    (raises `trust.Untrusted` otherwise). skops trusts only the code's `trust.TRUSTED_TYPES`.
    `threads` is the compiled model's and the native library's thread count (0: every core).
    Both the ONNX graph and the native library are loaded when both passed parity: the graph
    answers requests, the library (or the numpy runtime) scores frames."""
    path = Path(path)
    meta = read_meta(path)
    data = trust.read_verified(path / MODEL_FILE, meta["digests"][MODEL_FILE], describe(path))
    model = trust.load_skops(data, describe(path))
    classes = [c.item() if hasattr(c, "item") else c for c in getattr(model, "classes_", [])]
    loaded = LoadedModel(
        model=model,
        version=str(meta["version"]),
        task=meta["task"],
        features=list(model.feature_names_in_),
        classes=classes,
        meta=meta,
        compiled=compiled_runtime(path, meta, threads),
        native=native_runtime(path, model, meta, threads),
    )
    if loaded.compiled is not None or loaded.runtime == "native":
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
