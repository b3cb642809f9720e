"""`make package`: the registry's champion, imported into BentoML and built into a bento.

    python -m pipelines package

Steps, each its own function below: find the champion's version (`registry`), reuse its BentoML
model if the same version was packaged with the same serving spec and digest (`packaged_model`),
else download it and verify its bytes against the digest the gate recorded (`artifacts`), write
its meta (`model_meta`), compile and verify it (`compile_champion`), store those same bytes with
their digests (`store_model`, `record_compilation`); check the stored files as the service will
(`verify_stored`); then build the bento (`package`).

Beside the model goes its monitoring reference (`monitoring_reference`): statistics of the
champion's training data and of its predictions on it, which `make monitor` compares traffic
with. It is stored in the bundle (digest in meta.json) and on the MLflow run (digest as the
version's `monitoring.reference.sha256` tag), so a rollback brings its own reference back.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import files, stores
from pipelines.core.errors import ParamsError, PipelineError
from pipelines.modeling import runs
from pipelines.monitoring.reference import REFERENCE_ARTIFACT, REFERENCE_TAG
from pipelines.release import artifacts, registry
from pipelines.serving import bundle, registry_view

# BentoML settings, packaged with the model
SERVICE_KEYS = (
    "workers",
    "trace_requests",
    "access_log",
    "tls_ciphers",
    "prediction_log",
    "max_requests_per_connection",
    "pin_workers",
)
PARITY_KEYS = ("min_label_agreement", "max_metric_delta", "max_relative_error")
LIMIT_KEYS = ("max_records", "max_body_bytes", "max_string_length", "max_queue_rows", "body_timeout_seconds")


def serving_limits(params: dict) -> dict[str, int]:
    """`serving.limits`, complete and positive: the service enforces exactly these."""
    limits = params["serving"].get("limits") or {}
    bad = [k for k in LIMIT_KEYS if not isinstance(limits.get(k), int) or limits[k] <= 0]
    if bad:
        raise ParamsError(f"serving.limits needs positive integers for: {', '.join(bad)}")
    return {k: limits[k] for k in LIMIT_KEYS}


def service_settings(params: dict) -> dict[str, Any]:
    """The `serving` settings BentoML's service reads (SERVICE_KEYS), with the ones it would refuse at
    start refused here, before anything is packaged."""
    from pipelines.serving import affinity

    settings = {k: params["serving"][k] for k in SERVICE_KEYS if k in params["serving"]}
    try:
        affinity.setting(settings, {})
    except ValueError as exc:
        raise ParamsError(str(exc)) from None
    return settings


def request_fields(params: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """The features' and the id columns' contract, from which the service builds its schema."""
    from pipelines.data import contract

    schema = contract.load_contract(params["paths"]["contract"])
    data = params["data"]
    ignore = list(data.get("ignore") or [])
    features = [c for c in schema.columns if c != data["target"] and c not in ignore]
    return contract.field_specs(schema, features), contract.id_specs(schema, ignore)


def model_meta(version: Any, run: Any, positive: Any, params: dict) -> dict[str, Any]:
    """What the service needs beside the model file, and what a person auditing it wants."""
    import mlflow

    tags = run.data.tags
    fields, optional = request_fields(params)
    return {
        "fields": fields,
        "optional_fields": optional,
        "target": params["data"]["target"],
        "limits": serving_limits(params),
        "service": service_settings(params),
        "version": str(version.version),
        "registered_model": version.name,
        "run_id": version.run_id,
        "task": tags.get("task", "classification"),
        "candidate": tags.get("candidate"),
        "positive_class": positive,
        "lineage": runs.lineage_of(tags),
        "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith(("holdout_", "cv_"))},
        # Where /metadata looks up the champion (no credentials): MLFLOW_TRACKING_URI overrides it.
        "tracking_uri": registry_view.shareable_uri(mlflow.get_tracking_uri()),
        "rollout": rollout_settings(params),
    }


def rollout_settings(params: dict) -> dict[str, Any]:
    """What the service needs to follow a rollout: how often to read the registry, and the record
    field that routes a canary when a request has no X-Routing-Key header."""
    rules = params.get("rollout") or {}
    return {"poll_seconds": rules.get("poll_seconds"), "routing_field": rules.get("routing_field")}


@dataclass(frozen=True)
class ParityInputs:
    """What a compiled or native model is checked against (release/compilation.py's parity rule):
    the holdout, read once per packaged version, and how its metric is scored."""

    holdout: pd.DataFrame
    target: str
    task: str
    positive: Any
    metric: str
    bounds: dict[str, float]

    def kwargs(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "task": self.task,
            "positive": self.positive,
            "metric": self.metric,
            "bounds": self.bounds,
        }


def parity_inputs(model: Any, meta: dict[str, Any], params: dict) -> ParityInputs | str:
    """The parity check's inputs, or the reason there are none (no holdout to check on)."""
    from pipelines.modeling import metrics

    bounds = params["serving"].get("parity") or {}
    if sorted(bounds) != sorted(PARITY_KEYS) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in bounds.values()
    ):
        raise ParamsError(f"serving.parity needs the numbers {', '.join(PARITY_KEYS)}")
    holdout_path = Path(params["paths"]["holdout"])
    if not holdout_path.is_file():
        return f"no holdout at {holdout_path} to verify on"
    holdout = pd.read_parquet(holdout_path)
    task, target = meta["task"], meta["target"]
    positive = None
    if task == "classification" and len(getattr(model, "classes_", [])) == 2:
        positive = metrics.positive_label(holdout[target], meta.get("positive_class"))
    metric = params["promote"].get("primary_metric") or metrics.primary_metric(task)
    return ParityInputs(holdout, target, task, positive, metric, dict(bounds))


def compile_choice(params: dict) -> str:
    choice = params["serving"].get("compile", "onnx")
    if choice not in ("onnx", "none"):
        raise ParamsError(f"serving.compile '{choice}' is unknown; use onnx or none")
    return choice


def compile_champion(model: Any, parity: ParityInputs | str, params: dict) -> tuple[bytes | None, dict]:
    """The champion compiled and checked on the holdout, or None and the reason it was not."""
    from pipelines.release import compilation

    if compile_choice(params) == "none":
        return None, {"runtime": "sklearn", "reason": "serving.compile is 'none' in params.yaml"}
    if isinstance(parity, str):
        return None, {"runtime": "sklearn", "reason": parity}
    return compilation.compile_model(model, parity.holdout, **parity.kwargs())


def native_enabled(params: dict) -> bool:
    """`serving.native` (true when absent): build a tree ensemble into a native library."""
    value = params["serving"].get("native", True)
    if not isinstance(value, bool):
        raise ParamsError(f"serving.native must be true or false, not {value!r}")
    return value


def native_champion(model: Any, parity: ParityInputs | str, params: dict) -> tuple[bytes | None, dict]:
    """A tree-ensemble champion built into a shared library and checked on the holdout by the
    ONNX compile's parity rule (release/native.py), or None and the reason it was not. Any
    champion whose ColumnTransformer the numpy transform reproduces exactly gets the "numpy"
    runtime instead when there is no library (release/native.py)."""
    from pipelines.release import native

    if not native_enabled(params):
        return None, {"runtime": None, "reason": "serving.native is false in params.yaml"}
    if isinstance(parity, str):
        return None, {"runtime": None, "reason": parity}
    return native.compile_native(model, parity.holdout, **parity.kwargs())


def record_compilation(
    client: Any, version: Any, record: dict, onnx_file: Path, native_record: dict | None = None
) -> None:
    """The compile records (and the graph, if one serves) on the champion's MLflow run and
    registry version. The native library stays out of MLflow: it is only ever built locally."""
    client.log_dict(version.run_id, record, "compiled/record.json")
    if onnx_file.is_file():
        client.log_artifact(version.run_id, str(onnx_file), "compiled")
    runtime, reason = record["runtime"], record["reason"] or ""
    if native_record is not None:
        client.log_dict(version.run_id, native_record, "native/record.json")
        if native_record.get("runtime") == "native" and runtime != "onnx":
            runtime, reason = "native", ""
    client.set_model_version_tag(version.name, version.version, "serving.runtime", runtime)
    client.set_model_version_tag(version.name, version.version, "serving.runtime_reason", reason)
    if native_record is not None:
        client.set_model_version_tag(
            version.name, version.version, "serving.native_reason", native_record.get("reason") or ""
        )
        batch = native_record.get("runtime") or runtime
        client.set_model_version_tag(version.name, version.version, "serving.batch_runtime", batch)


def serving_spec(params: dict) -> str:
    """A hash of everything packaged beside the model: a contract, limit, compile or service
    setting change repackages the same champion. So does a new `compilation.REVISION`."""
    from pipelines.release import compilation, native

    settings = service_settings(params)
    return runs.params_hash(
        [
            request_fields(params),
            serving_limits(params),
            params["data"]["target"],
            params["serving"].get("compile"),
            params["serving"].get("parity"),
            compilation.REVISION,
            native_enabled(params),
            native.REVISION,
            *(settings.get(k) for k in SERVICE_KEYS),
            reference_settings(params),
            rollout_settings(params),
        ]
    )


def packaged_model(version: Any, spec: str, store_name: str = bundle.MODEL_NAME) -> Any | None:
    """The BentoML model already made from this registry version with this serving spec, or None.
    A challenger's (`store_name` bundle.CHALLENGER_NAME) is any such model; the champion's must be
    the store's latest champion.

    The service and batch scoring load `<champion name>:latest`. When the champion was packaged
    before (or as challenger) but another model has been packaged as champion since (a rollback
    brings an older champion back; a finished rollout promotes the challenger), its files are
    copied into a new version, which becomes latest; the compile record comes along.
    """
    import bentoml

    stored = bentoml.models.list()  # all models: listing by name raises when there is none
    matches = sorted(
        (
            model
            for model in stored
            if model.tag.name in (bundle.MODEL_NAME, bundle.CHALLENGER_NAME)
            and model.info.labels.get("run_id") == version.run_id
            and model.info.labels.get("registry_version") == str(version.version)
            and model.info.labels.get("serving_spec") == spec
            # A model packaged before digests existed is not reused: `make package` re-creates it.
            and model.info.labels.get(bundle.SKOPS_LABEL) == artifacts.recorded_digest(version)
        ),
        key=lambda model: model.info.creation_time,
        reverse=True,
    )
    if not matches:
        return None
    if store_name == bundle.CHALLENGER_NAME:
        return matches[0]
    has_champion = any(model.tag.name == bundle.MODEL_NAME for model in stored)
    latest = bentoml.models.get(f"{bundle.MODEL_NAME}:latest") if has_champion else None
    if latest is not None and any(model.tag == latest.tag for model in matches):
        return latest
    source = matches[0]
    with bentoml.models.create(
        bundle.MODEL_NAME, labels=dict(source.info.labels), metadata=dict(source.info.metadata)
    ) as model:
        for name in (
            bundle.MODEL_FILE,
            bundle.COMPILED_FILE,
            bundle.NATIVE_FILE,
            bundle.META_FILE,
            bundle.REFERENCE_FILE,
        ):
            if (Path(source.path) / name).is_file():
                shutil.copy(Path(source.path) / name, Path(model.path) / name)
    return bentoml.models.get(model.tag)


def verify_stored(model: Any) -> None:
    """Every file of a stored model against its digests, as the service will check them: a
    tampered store fails `make package` here, not only when the service starts."""
    from pipelines.serving import trust

    path = Path(model.path)
    try:
        meta = bundle.read_meta(path)
        for name, digest in meta["digests"].items():
            trust.read_verified(path / name, digest, bundle.describe(path))
    except trust.Untrusted as exc:
        raise PipelineError(
            f"{exc}; delete it (`bentoml models delete {model.tag}`) and run `make package` again"
        ) from None


def reference_settings(params: dict) -> dict[str, Any]:
    """What shapes the monitoring reference (`monitor.reference_sample`, `monitor.psi_bins`, the
    seed, the reference's schema): a change re-packages the champion with a new reference."""
    from pipelines.monitoring import reference

    monitor = params.get("monitor") or {}
    settings = {
        "sample_size": monitor.get("reference_sample"),
        "bins": monitor.get("psi_bins"),
        "seed": params.get("seed"),
    }
    for key, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "seed" else 2):
            name = {"sample_size": "monitor.reference_sample", "bins": "monitor.psi_bins"}.get(key, key)
            raise ParamsError(f"{name} in params.yaml must be a whole number (at least 2, seed 0)")
    return settings | {"schema_version": reference.SCHEMA_VERSION}


def served_scores(
    model: Any, onnx: bytes | None, meta: dict[str, Any], X: pd.DataFrame, library: bytes | None = None
) -> np.ndarray:
    """Scores as the service computes them: the native library or the compiled graph when one
    serves, else scikit-learn."""
    from pipelines.serving.runtimes import CompiledRuntime, NativeRuntime, model_outputs

    if library is not None:
        record = meta["native"]
        runtime = NativeRuntime(
            library,
            model,
            meta["task"],
            threads=0,
            float32_input=record.get("input") == "float32",
            fast=record.get("transform") == "numpy",
        )
        return runtime.run(runtime.matrix_of_frame(X))
    if onnx is not None:
        runtime = CompiledRuntime(onnx, meta["compiled"]["inputs"], meta["task"], threads=0)
        return runtime.run(runtime.frame_feeds(X))
    return model_outputs(model, X, meta["task"])


def monitoring_reference(
    model: Any,
    onnx: bytes | None,
    meta: dict[str, Any],
    lineage: dict[str, str],
    params: dict,
    library: bytes | None = None,
) -> bytes:
    """The champion's monitoring reference as JSON bytes: its training split's features (the
    contract's fields) and its predictions on them **as served**: by the runtime that serves
    (the compiled graph, or scikit-learn), probabilities rounded as the answers and the log round
    them. Scores that take few distinct values then match the logged ones exactly; computed by
    scikit-learn unrounded, they sat 1e-7 off each atom, and unchanged traffic read as drifted
    (KS p 1e-34, PSI 5.6). `source.matches_lineage` says whether the training split on disk is
    the data the model was trained on (the run's data MD5)."""
    from pipelines.modeling import metrics
    from pipelines.monitoring import labels, reference
    from pipelines.serving.answers import PROBABILITY_DECIMALS

    train_path = Path(params["paths"]["train"])
    if not train_path.is_file():
        raise PipelineError(
            f"no training split at {train_path} to build the monitoring reference from: run `dvc repro`"
        )
    train = pd.read_parquet(train_path)
    features = [name for name in meta["fields"] if name in train.columns]
    if len(features) < len(meta["fields"]):
        raise PipelineError(f"the training split at {train_path} lacks columns the champion takes")
    X = train[list(getattr(model, "feature_names_in_", features))]
    settings = reference_settings(params)
    scores = served_scores(model, onnx, meta, X, library)
    if meta["task"] == "classification":
        plain = [c.item() if hasattr(c, "item") else c for c in model.classes_]
        classes = [labels.class_key(c) for c in plain]
        rounded = np.round(scores.astype(float), PROBABILITY_DECIMALS)
        probabilities = pd.DataFrame(rounded, columns=classes, index=X.index)
        predicted = pd.Series(np.asarray(classes, dtype=object)[scores.argmax(axis=1)], index=X.index)
        positive = None
        if len(classes) == 2:
            # The run records the positive class as text; the log keys classes as JSON does.
            named = [c for c in plain if str(c) == str(meta.get("positive_class"))]
            if not named and meta["target"] in train.columns:
                named = [metrics.positive_label(train[meta["target"]])]
            first = named[0].item() if named and hasattr(named[0], "item") else (named or [None])[0]
            positive = labels.class_key(first) if named else None
        series, kind = reference.prediction_series(meta["task"], predicted, probabilities, positive)
        form = {"form": "probability", "class": positive} if kind == "numeric" else {"form": "class"}
    else:
        values = pd.Series(scores.astype(float).ravel(), index=X.index)
        series, kind = reference.prediction_series(meta["task"], values, None)
        form = {"form": "value"}
    built = reference.build_reference(
        train[features],
        series.reset_index(drop=True).set_axis(train.index),
        kind,
        fields=meta["fields"],
        model_version=meta["version"],
        sample_size=settings["sample_size"],
        bins=settings["bins"],
        seed=settings["seed"],
    )
    data_md5 = runs.file_md5(params["paths"]["raw"]) if Path(params["paths"]["raw"]).is_file() else None
    built["prediction_form"] = form
    built["source"] = {
        "train_rows": len(train),
        "matches_lineage": data_md5 is not None and data_md5 == lineage.get(f"{runs.LINEAGE_PREFIX}data_md5"),
    }
    return reference.encode(built)


def logged_reference(client: Any, version: Any) -> bytes | None:
    """The reference logged when this registry version was first packaged, verified against its
    digest tag; None when it was never logged. A rollback to an older champion takes this one,
    built from the data that champion was trained on, not today's training split."""
    from pipelines.serving import trust

    digest = (version.tags or {}).get(REFERENCE_TAG)
    if not digest:
        return None
    what = f"the monitoring reference of registry version {version.version}"
    with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
        try:
            local = client.download_artifacts(version.run_id, REFERENCE_ARTIFACT, tmp)
            return trust.read_verified(Path(local), digest, what)
        except trust.Untrusted as exc:
            raise PipelineError(str(exc)) from None
        except Exception as exc:  # MlflowException, OSError: the store cannot give it back
            raise PipelineError(f"{what} cannot be downloaded ({type(exc).__name__})") from None


def same_settings(data: bytes, params: dict) -> bool:
    """Whether a logged reference was built with today's reference settings."""
    built = json.loads(data)
    return {k: built.get(k) for k in ("sample_size", "bins", "seed", "schema_version")} == reference_settings(
        params
    )


def record_reference(client: Any, version: Any, data: bytes) -> None:
    """The reference on the champion's MLflow run, its digest on the registry version."""
    from pipelines.serving import trust

    with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
        path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
        path.write_bytes(data)
        client.log_artifact(version.run_id, str(path), str(Path(REFERENCE_ARTIFACT).parent))
    client.set_model_version_tag(version.name, version.version, REFERENCE_TAG, trust.sha256_bytes(data))


def store_model(
    meta: dict[str, Any],
    model_bytes: bytes,
    onnx: bytes | None,
    labels: dict[str, str],
    reference: bytes,
    store_name: str = bundle.MODEL_NAME,
    library: bytes | None = None,
) -> Any:
    """A new model in the BentoML store: the skops bytes the registry's digest verified, the
    verified graph, and meta.json with every file's digest. The labels anchor meta.json and the
    skops file, so tampering with a file and meta.json takes a third edit (BentoML's model.yaml)."""
    import bentoml

    from pipelines.serving import trust

    payload = {
        bundle.MODEL_FILE: model_bytes,
        **({bundle.COMPILED_FILE: onnx} if onnx is not None else {}),
        **({bundle.NATIVE_FILE: library} if library is not None else {}),
        bundle.REFERENCE_FILE: reference,
    }
    meta = {**meta, "digests": {name: trust.sha256_bytes(data) for name, data in payload.items()}}
    meta_bytes = (json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n").encode()
    labels = {
        **labels,
        bundle.SKOPS_LABEL: meta["digests"][bundle.MODEL_FILE],
        bundle.META_LABEL: trust.sha256_bytes(meta_bytes),
    }
    with bentoml.models.create(store_name, labels=labels, metadata={"task": meta["task"]}) as model:
        for name, data in {**payload, bundle.META_FILE: meta_bytes}.items():
            (Path(model.path) / name).write_bytes(data)
    return bentoml.models.get(model.tag)


def import_champion(client: Any, name: str, params: dict) -> Any:
    """The champion in the BentoML model store, labelled with its registry version and lineage.

    The registry version's skops bytes are verified against its `model.sha256` tag (recorded when
    the gate promoted it), and those same bytes are compiled and stored."""
    version = registry.champion_version(client, name)
    if version is None:
        raise PipelineError(f"'{name}' has no champion yet: run `make promote` first")
    return import_version(client, version, params, bundle.MODEL_NAME)


def import_challenger(client: Any, name: str, params: dict) -> Any | None:
    """The challenger under rollout, packaged beside the champion (never as its `latest`) so
    that running services can load it when they follow the registry; None without one."""
    version = registry.challenger_version(client, name)
    champion = registry.champion_version(client, name)
    if version is None or (champion is not None and champion.version == version.version):
        return None
    return import_version(client, version, params, bundle.CHALLENGER_NAME)


def import_version(client: Any, version: Any, params: dict, store_name: str) -> Any:
    """A registry version in the BentoML model store under `store_name`, verified and compiled."""
    name = version.name
    spec = serving_spec(params)
    existing = packaged_model(version, spec, store_name)
    if existing is not None:
        verify_stored(existing)
        return existing
    run = client.get_run(version.run_id)
    loaded = artifacts.load_version(name, version, require_digest=True)
    meta = model_meta(version, run, version.tags.get("positive_class"), params)
    # Checked before anything is spent: bad serving.compile, serving.native or serving.parity.
    compile_choice(params), native_enabled(params)
    parity = parity_inputs(loaded.model, meta, params)
    onnx, meta["compiled"] = compile_champion(loaded.model, parity, params)
    # Built here from the verified skops bytes, never downloaded: a library runs code when loaded.
    library, meta["native"] = native_champion(loaded.model, parity, params)
    labels = {
        "registered_model": name,
        "registry_version": str(version.version),
        "run_id": version.run_id,
        "serving_spec": spec,
        "runtime": meta["compiled"]["runtime"] if onnx is not None or library is None else "native",
        "batch_runtime": meta["native"].get("runtime") or meta["compiled"]["runtime"],
        **{k.removeprefix(runs.LINEAGE_PREFIX): v for k, v in meta["lineage"].items()},
    }
    reference = logged_reference(client, version)
    fresh = reference is None or not same_settings(reference, params)
    if fresh:
        reference = monitoring_reference(loaded.model, onnx, meta, meta["lineage"], params, library)
    model = store_model(meta, loaded.data, onnx, labels, reference, store_name, library)
    verify_stored(model)
    record_compilation(
        client, version, meta["compiled"], Path(model.path) / bundle.COMPILED_FILE, meta["native"]
    )
    if fresh:
        record_reference(client, version, reference)
    return model


def package_models(root: Path, params: dict) -> dict[str, Any]:
    """The registry's champion and challenger in the BentoML store, without building a bento (~1 s
    when both are packaged already): what running services load when they follow the registry,
    and the champion as `latest` for batch scoring and a restarted service."""
    stores.use_bentoml_home(root, params)
    import mlflow

    runs.use_project_experiment(root, params)
    client = mlflow.MlflowClient()
    name = params["promote"]["registered_model"]
    champion = import_champion(client, name, params)
    challenger = import_challenger(client, name, params)
    record = {"model": str(champion.tag), "registry_version": champion.info.labels["registry_version"]}
    if challenger is not None:
        record["challenger"] = {
            "model": str(challenger.tag),
            "registry_version": challenger.info.labels["registry_version"],
        }
    return record


def package(root: Path, params: dict) -> dict[str, Any]:
    stores.use_bentoml_home(root, params)
    import bentoml
    import mlflow
    from bentoml._internal.configuration.containers import BentoMLContainer

    runs.use_project_experiment(root, params)
    client = mlflow.MlflowClient()
    model = import_champion(client, params["promote"]["registered_model"], params)
    challenger = import_challenger(client, params["promote"]["registered_model"], params)
    labels = {k: v for k, v in model.info.labels.items() if k in ("registry_version", "run_id", "git_commit")}
    bento = bentoml.bentos.build_bentofile(str(root / "bentofile.yaml"), build_ctx=str(root), labels=labels)
    record = {
        "at": registry.now(),
        "bento": str(bento.tag),
        "model": str(model.tag),
        "registry_version": model.info.labels["registry_version"],
        "runtime": model.info.labels.get("runtime", "sklearn"),
        "batch_runtime": model.info.labels.get("batch_runtime", model.info.labels.get("runtime", "sklearn")),
        "run_id": model.info.labels["run_id"],
        "bentoml_home": str(BentoMLContainer.bentoml_home.get()),
    }
    if challenger is not None:
        record["challenger"] = {
            "model": str(challenger.tag),
            "registry_version": challenger.info.labels["registry_version"],
            "runtime": challenger.info.labels.get("runtime", "sklearn"),
        }
    files.write_json(record, params["paths"]["bento"])
    return record
