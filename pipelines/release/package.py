"""`make package`: the registry's champion, imported into BentoML and built into a bento.

    python -m pipelines package

Steps, each its own function below: find the champion's version (`registry`), reuse its BentoML
model if the same version was packaged with the same serving spec and digest (`packaged_model`),
else download it and verify its bytes against the digest the gate recorded (`artifacts`), write
its meta (`model_meta`), compile and verify it (`compile_champion`), store those same bytes with
their digests (`store_model`, `record_compilation`); check the stored files as the service will
(`verify_stored`); then build the bento (`package`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.core import files, stores
from pipelines.core.errors import ParamsError, PipelineError
from pipelines.modeling import runs
from pipelines.release import artifacts, registry
from pipelines.serving import bundle, registry_view

# BentoML settings, packaged with the model
SERVICE_KEYS = ("workers", "trace_requests", "access_log", "tls_ciphers", "prediction_log")
PARITY_KEYS = ("min_label_agreement", "max_metric_delta", "max_relative_error")
LIMIT_KEYS = ("max_records", "max_body_bytes", "max_string_length", "max_queue_rows", "body_timeout_seconds")


def serving_limits(params: dict) -> dict[str, int]:
    """`serving.limits`, complete and positive: the service enforces exactly these."""
    limits = params["serving"].get("limits") or {}
    bad = [k for k in LIMIT_KEYS if not isinstance(limits.get(k), int) or limits[k] <= 0]
    if bad:
        raise ParamsError(f"serving.limits needs positive integers for: {', '.join(bad)}")
    return {k: limits[k] for k in LIMIT_KEYS}


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
        "service": {k: params["serving"][k] for k in SERVICE_KEYS if k in params["serving"]},
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
    }


def compile_champion(model: Any, meta: dict[str, Any], params: dict) -> tuple[bytes | None, dict]:
    """The champion compiled and checked on the holdout, or None and the reason it was not."""
    from pipelines.modeling import metrics
    from pipelines.release import compilation

    choice = params["serving"].get("compile", "onnx")
    if choice not in ("onnx", "none"):
        raise ParamsError(f"serving.compile '{choice}' is unknown; use onnx or none")
    if choice == "none":
        return None, {"runtime": "sklearn", "reason": "serving.compile is 'none' in params.yaml"}
    holdout_path = Path(params["paths"]["holdout"])
    if not holdout_path.is_file():
        return None, {
            "runtime": "sklearn",
            "reason": f"no holdout at {holdout_path} to verify a compiled model on",
        }
    holdout = pd.read_parquet(holdout_path)
    task, target = meta["task"], meta["target"]
    positive = None
    if task == "classification" and len(getattr(model, "classes_", [])) == 2:
        positive = metrics.positive_label(holdout[target], meta.get("positive_class"))
    bounds = params["serving"].get("parity") or {}
    if sorted(bounds) != sorted(PARITY_KEYS) or not all(isinstance(v, int | float) for v in bounds.values()):
        raise ParamsError(f"serving.parity needs the numbers {', '.join(PARITY_KEYS)}")
    return compilation.compile_model(
        model,
        holdout,
        target=target,
        task=task,
        positive=positive,
        metric=params["promote"].get("primary_metric") or metrics.primary_metric(task),
        bounds=bounds,
    )


def record_compilation(client: Any, version: Any, record: dict, onnx_file: Path) -> None:
    """The compile record (and the graph, if one serves) on the champion's MLflow run and
    registry version."""
    client.log_dict(version.run_id, record, "compiled/record.json")
    if onnx_file.is_file():
        client.log_artifact(version.run_id, str(onnx_file), "compiled")
    client.set_model_version_tag(version.name, version.version, "serving.runtime", record["runtime"])
    client.set_model_version_tag(
        version.name, version.version, "serving.runtime_reason", record["reason"] or ""
    )


def serving_spec(params: dict) -> str:
    """A hash of everything packaged beside the model: a contract, limit, compile or service
    setting change repackages the same champion. So does a new `compilation.REVISION`."""
    from pipelines.release import compilation

    return runs.params_hash(
        [
            request_fields(params),
            serving_limits(params),
            params["data"]["target"],
            params["serving"].get("compile"),
            params["serving"].get("parity"),
            compilation.REVISION,
            *(params["serving"].get(k) for k in SERVICE_KEYS),
        ]
    )


def packaged_model(version: Any, spec: str) -> Any | None:
    """The BentoML model already made from this registry version with this serving spec, as the
    store's latest, or None.

    The service and batch scoring load `<name>:latest`. When the champion was packaged before but
    another model has been packaged since (a rollback brings an older champion back), its files
    are copied into a new version, which becomes latest; the compile record comes along.
    """
    import bentoml

    matches = [
        model
        for model in bentoml.models.list()  # all models: listing by name raises when there is none
        if model.tag.name == bundle.MODEL_NAME
        and model.info.labels.get("run_id") == version.run_id
        and model.info.labels.get("registry_version") == str(version.version)
        and model.info.labels.get("serving_spec") == spec
        # A model packaged before digests existed is not reused: `make package` re-creates it.
        and model.info.labels.get(bundle.SKOPS_LABEL) == artifacts.recorded_digest(version)
    ]
    if not matches:
        return None
    latest = bentoml.models.get(f"{bundle.MODEL_NAME}:latest")
    if any(model.tag == latest.tag for model in matches):
        return latest
    source = matches[0]
    with bentoml.models.create(
        bundle.MODEL_NAME, labels=dict(source.info.labels), metadata=dict(source.info.metadata)
    ) as model:
        for name in (bundle.MODEL_FILE, bundle.COMPILED_FILE, bundle.META_FILE):
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


def store_model(meta: dict[str, Any], model_bytes: bytes, onnx: bytes | None, labels: dict[str, str]) -> Any:
    """A new model in the BentoML store: the skops bytes the registry's digest verified, the
    verified graph, and meta.json with every file's digest. The labels anchor meta.json and the
    skops file, so tampering with a file and meta.json takes a third edit (BentoML's model.yaml)."""
    import bentoml

    from pipelines.serving import trust

    payload = {bundle.MODEL_FILE: model_bytes, **({bundle.COMPILED_FILE: onnx} if onnx is not None else {})}
    meta = {**meta, "digests": {name: trust.sha256_bytes(data) for name, data in payload.items()}}
    meta_bytes = (json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n").encode()
    labels = {
        **labels,
        bundle.SKOPS_LABEL: meta["digests"][bundle.MODEL_FILE],
        bundle.META_LABEL: trust.sha256_bytes(meta_bytes),
    }
    with bentoml.models.create(bundle.MODEL_NAME, labels=labels, metadata={"task": meta["task"]}) as model:
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
    spec = serving_spec(params)
    existing = packaged_model(version, spec)
    if existing is not None:
        verify_stored(existing)
        return existing
    run = client.get_run(version.run_id)
    loaded = artifacts.load_version(name, version, require_digest=True)
    meta = model_meta(version, run, version.tags.get("positive_class"), params)
    onnx, meta["compiled"] = compile_champion(loaded.model, meta, params)
    labels = {
        "registered_model": name,
        "registry_version": str(version.version),
        "run_id": version.run_id,
        "serving_spec": spec,
        "runtime": meta["compiled"]["runtime"],
        **{k.removeprefix(runs.LINEAGE_PREFIX): v for k, v in meta["lineage"].items()},
    }
    model = store_model(meta, loaded.data, onnx, labels)
    verify_stored(model)
    record_compilation(client, version, meta["compiled"], Path(model.path) / bundle.COMPILED_FILE)
    return model


def package(root: Path, params: dict) -> dict[str, Any]:
    stores.use_bentoml_home(root, params)
    import bentoml
    import mlflow
    from bentoml._internal.configuration.containers import BentoMLContainer

    runs.use_project_experiment(root, params)
    model = import_champion(mlflow.MlflowClient(), params["promote"]["registered_model"], params)
    labels = {k: v for k, v in model.info.labels.items() if k in ("registry_version", "run_id", "git_commit")}
    bento = bentoml.bentos.build_bentofile(str(root / "bentofile.yaml"), build_ctx=str(root), labels=labels)
    record = {
        "at": registry.now(),
        "bento": str(bento.tag),
        "model": str(model.tag),
        "registry_version": model.info.labels["registry_version"],
        "runtime": model.info.labels.get("runtime", "sklearn"),
        "run_id": model.info.labels["run_id"],
        "bentoml_home": str(BentoMLContainer.bentoml_home.get()),
    }
    files.write_json(record, params["paths"]["bento"])
    return record
