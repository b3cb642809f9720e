"""`make package`: the registry's champion, imported into BentoML and built into a bento.

python -m pipelines.package          # import the champion, build the bento, record its tag
python -m pipelines.package --home   # print the BentoML home the project uses
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipelines import config, dataio, registry, serving, tracking
from pipelines.errors import ParamsError, PipelineError

SERVICE_KEYS = ("workers", "trace_requests", "access_log")  # BentoML settings, packaged with the model
PARITY_KEYS = ("min_label_agreement", "max_metric_delta", "max_relative_error")


def bentoml_home(root: Path, params: dict) -> Path:
    """BENTOML_HOME if set, else the project's own store, absolute and stable like MLflow's."""
    if os.environ.get("BENTOML_HOME"):
        return Path(os.environ["BENTOML_HOME"])
    return tracking.store_dir(root, params["serving"]["bentoml_home"])


def request_fields(params: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """The features' and the id columns' contract, from which the service builds its schema."""
    from pipelines import contract

    schema = contract.load_contract(params["paths"]["contract"])
    data = params["data"]
    ignore = list(data.get("ignore") or [])
    features = [c for c in schema.columns if c != data["target"] and c not in ignore]
    return contract.field_specs(schema, features), contract.field_specs(schema, ignore)


def model_meta(version: Any, run: Any, mlmodel: dict, positive: Any, params: dict) -> dict[str, Any]:
    """What the service needs beside the model file, and what a person auditing it wants."""
    tags = run.data.tags
    fields, optional = request_fields(params)
    return {
        "fields": fields,
        "optional_fields": optional,
        "target": params["data"]["target"],
        "limits": {**serving.DEFAULT_LIMITS, **(params["serving"].get("limits") or {})},
        "service": {k: params["serving"][k] for k in SERVICE_KEYS if k in params["serving"]},
        "version": str(version.version),
        "registered_model": version.name,
        "run_id": version.run_id,
        "task": tags.get("task", "classification"),
        "candidate": tags.get("candidate"),
        "positive_class": positive,
        "lineage": {k: v for k, v in tags.items() if k.startswith("lineage.")},
        "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith(("holdout_", "cv_"))},
        "trusted_types": mlmodel["flavors"]["sklearn"].get("skops_trusted_types") or [],
    }


def compile_champion(model_file: Path, meta: dict[str, Any], params: dict) -> tuple[bytes | None, dict]:
    """The champion compiled and checked on the holdout, or None and the reason it was not."""
    from pipelines import compile, metrics

    choice = params["serving"].get("compile", "onnx")
    if choice not in ("onnx", "none"):
        raise ParamsError(f"serving.compile '{choice}' is unknown; use onnx or none")
    if choice == "none":
        return None, {"engine": "sklearn", "reason": "serving.compile is 'none' in params.yaml"}
    holdout_path = Path(params["paths"]["holdout"])
    if not holdout_path.is_file():
        return None, {
            "engine": "sklearn",
            "reason": f"no holdout at {holdout_path} to verify a compiled model on",
        }
    import skops.io

    model = skops.io.load(model_file, trusted=meta["trusted_types"])
    holdout = pd.read_parquet(holdout_path)
    task, target = meta["task"], meta["target"]
    positive = None
    if task == "classification" and len(getattr(model, "classes_", [])) == 2:
        positive = metrics.positive_label(holdout[target], meta.get("positive_class"))
    bounds = params["serving"].get("parity") or {}
    if sorted(bounds) != sorted(PARITY_KEYS) or not all(isinstance(v, int | float) for v in bounds.values()):
        raise ParamsError(f"serving.parity needs the numbers {', '.join(PARITY_KEYS)}")
    return compile.compile_model(
        model,
        holdout,
        target=target,
        task=task,
        positive=positive,
        metric=params["promote"].get("primary_metric") or metrics.primary_metric(task),
        bounds=bounds,
    )


def record_compilation(client: Any, version: Any, record: dict, onnx_file: Path | None) -> None:
    """The compile record (and the graph) on the champion's MLflow run and registry version."""
    client.log_dict(version.run_id, record, "compiled/record.json")
    if onnx_file is not None:
        client.log_artifact(version.run_id, str(onnx_file), "compiled")
    client.set_model_version_tag(version.name, version.version, "serving.engine", record["engine"])
    client.set_model_version_tag(
        version.name, version.version, "serving.engine_reason", record["reason"] or ""
    )


def import_champion(client: Any, name: str, params: dict) -> Any:
    """The champion in the BentoML model store, labelled with its registry version and lineage."""
    import mlflow

    import bentoml

    version = registry.champion_version(client, name)
    if version is None:
        raise PipelineError(f"'{name}' has no champion yet: run `make promote` first")
    # The request schema and limits are part of the packaged model: a contract edit repackages.
    # So are the compile settings: changing them recompiles.
    spec_hash = tracking.params_hash(
        [
            request_fields(params),
            params["serving"].get("limits"),
            params["data"]["target"],
            params["serving"].get("compile"),
            params["serving"].get("parity"),
            *(params["serving"].get(k) for k in SERVICE_KEYS),
        ]
    )
    for existing in bentoml.models.list():
        if existing.tag.name != serving.MODEL_NAME:
            continue
        labels = existing.info.labels
        same_model = labels.get("run_id") == version.run_id and labels.get("registry_version") == str(
            version.version
        )
        if same_model and labels.get("serving_spec") == spec_hash:
            return existing
    run = client.get_run(version.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version.version}", dst_path=tmp))
        mlmodel = yaml.safe_load((local / "MLmodel").read_text())
        meta = model_meta(version, run, mlmodel, version.tags.get("positive_class"), params)
        model_file = local / mlmodel["flavors"]["sklearn"]["pickled_model"]
        onnx_bytes, meta["compiled"] = compile_champion(model_file, meta, params)
        onnx_file = None
        if onnx_bytes is not None:
            onnx_file = Path(tmp) / serving.COMPILED_FILE
            onnx_file.write_bytes(onnx_bytes)
        labels = {
            "registered_model": name,
            "registry_version": str(version.version),
            "run_id": version.run_id,
            "serving_spec": spec_hash,
            "engine": meta["compiled"]["engine"],
            **{k.replace("lineage.", ""): v for k, v in meta["lineage"].items()},
        }
        with bentoml.models.create(
            serving.MODEL_NAME, labels=labels, metadata={"task": meta["task"]}
        ) as model:
            shutil.copy(model_file, Path(model.path) / serving.MODEL_FILE)
            if onnx_file is not None:
                shutil.copy(onnx_file, Path(model.path) / serving.COMPILED_FILE)
            dataio.write_json(meta, Path(model.path) / serving.META_FILE)
        record_compilation(client, version, meta["compiled"], onnx_file)
    return bentoml.models.get(model.tag)


def package(root: Path, params: dict) -> dict[str, Any]:
    os.environ["BENTOML_HOME"] = str(bentoml_home(root, params))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    import mlflow

    import bentoml

    tracking.use_experiment(
        params["tracking"]["experiment"], tracking.store_dir(root, params["tracking"]["store"])
    )
    model = import_champion(mlflow.MlflowClient(), params["promote"]["registered_model"], params)
    labels = {k: v for k, v in model.info.labels.items() if k in ("registry_version", "run_id", "git_commit")}
    bento = bentoml.bentos.build_bentofile(str(root / "bentofile.yaml"), build_ctx=str(root), labels=labels)
    record = {
        "at": registry.now(),
        "bento": str(bento.tag),
        "model": str(model.tag),
        "registry_version": model.info.labels["registry_version"],
        "engine": model.info.labels.get("engine", "sklearn"),
        "run_id": model.info.labels["run_id"],
        "bentoml_home": os.environ["BENTOML_HOME"],
    }
    dataio.write_json(record, params["paths"]["bento"])
    return record


def main(argv: list[str]) -> int:
    try:
        root = config.project_root()
        params = config.load_params(root / config.PARAMS_FILE)
        if "--home" in argv:
            print(bentoml_home(root, params))
            return 0
        record = package(root, params)
    except PipelineError as exc:
        print(f"ERROR package: {exc}", file=sys.stderr)
        return 1
    print(
        f"PACKAGED {record['bento']} with {record['model']} "
        f"(champion v{record['registry_version']}, served by {record['engine']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
