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

import yaml

from pipelines import config, dataio, registry, serving, tracking
from pipelines.errors import PipelineError


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


def import_champion(client: Any, name: str, params: dict) -> Any:
    """The champion in the BentoML model store, labelled with its registry version and lineage."""
    import mlflow

    import bentoml

    version = registry.champion_version(client, name)
    if version is None:
        raise PipelineError(f"'{name}' has no champion yet: run `make promote` first")
    # The request schema and limits are part of the packaged model: a contract edit repackages.
    spec_hash = tracking.params_hash(
        [request_fields(params), params["serving"].get("limits"), params["data"]["target"]]
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
        labels = {
            "registered_model": name,
            "registry_version": str(version.version),
            "run_id": version.run_id,
            "serving_spec": spec_hash,
            **{k.replace("lineage.", ""): v for k, v in meta["lineage"].items()},
        }
        with bentoml.models.create(
            serving.MODEL_NAME, labels=labels, metadata={"task": meta["task"]}
        ) as model:
            shutil.copy(
                local / mlmodel["flavors"]["sklearn"]["pickled_model"], Path(model.path) / serving.MODEL_FILE
            )
            dataio.write_json(meta, Path(model.path) / serving.META_FILE)
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
    print(f"PACKAGED {record['bento']} with {record['model']} (champion v{record['registry_version']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
