"""`make package` in a real MLflow registry and BentoML store: what it records, and that the
store's latest model (which the service and batch scoring load) is always the champion."""

import json
from pathlib import Path

import pytest
from helpers.champion import package_project, project, train_candidate  # noqa: F401 - fixture
from helpers.support import PROJECT as REPO

from pipelines.core import stores
from pipelines.release import promotion
from pipelines.serving import bundle

pytestmark = pytest.mark.integration


def packaged_meta(record):
    name, version = record["model"].split(":")
    return json.loads(
        (Path(record["bentoml_home"]) / "models" / name / version / bundle.META_FILE).read_text()
    )


@pytest.mark.parametrize("choice", ["onnx", "none"])
def test_packaging_records_the_runtime_with_the_bento_and_in_mlflow(project, choice):
    """`make package` compiles (or not), and says what serves and why, in the bento and MLflow."""
    import mlflow

    root, params = project
    train_candidate(params, hide=[])
    assert promotion.run_promotion(root, params)["promoted"]
    record = package_project(root, params, REPO, compile=choice)
    meta = packaged_meta(record)
    model_dir = Path(record["bentoml_home"]) / "models" / Path(*record["model"].split(":"))
    client = mlflow.MlflowClient(stores.tracking_uri(Path(params["tracking"]["store"])))
    version = client.get_model_version(params["promote"]["registered_model"], record["registry_version"])
    logged = client.list_artifacts(version.run_id, "compiled")
    if choice == "onnx":
        assert record["runtime"] == meta["compiled"]["runtime"] == "onnx"
        assert meta["compiled"]["parity"]["passed"] and meta["compiled"]["reason"] is None
        assert (model_dir / bundle.COMPILED_FILE).is_file()
        assert {Path(a.path).name for a in logged} == {"record.json", bundle.COMPILED_FILE}
        assert bundle.load(model_dir).runtime == "onnx"
    else:
        assert record["runtime"] == meta["compiled"]["runtime"] == "sklearn"
        assert "serving.compile is 'none'" in meta["compiled"]["reason"]
        assert not (model_dir / bundle.COMPILED_FILE).exists()
        assert {Path(a.path).name for a in logged} == {"record.json"}
        assert bundle.load(model_dir).runtime.startswith("sklearn")
    assert version.tags["serving.runtime"] == meta["compiled"]["runtime"]
    assert version.tags["serving.runtime_reason"] == (meta["compiled"]["reason"] or "")


def latest_labels(record):
    """The labels of the store's `tabular-champion:latest`, read from the store's own files."""
    import yaml

    models = Path(record["bentoml_home"]) / "models" / bundle.MODEL_NAME
    version = (models / "latest").read_text().strip()
    return yaml.safe_load((models / version / "model.yaml").read_text())["labels"]


@pytest.mark.timeout(600)
def test_after_a_rollback_package_makes_the_restored_champion_latest(project):
    root, params = project
    train_candidate(params, hide=["x1", "x2"])
    assert promotion.run_promotion(root, params)["promoted"]
    first = package_project(root, params, REPO)
    train_candidate(params, hide=[])
    assert promotion.run_promotion(root, params)["promoted"]
    second = package_project(root, params, REPO)
    assert latest_labels(second)["registry_version"] == second["registry_version"] == "2"
    promotion.run_rollback(root, params, "bad release")
    third = package_project(root, params, REPO)
    assert third["registry_version"] == "1"
    assert latest_labels(third)["registry_version"] == "1"
    assert latest_labels(third)["run_id"] == first["run_id"]
    # The bento built last refers to the restored champion's model, not the demoted one.
    import yaml

    name, version = third["bento"].split(":")
    home = Path(third["bentoml_home"])
    bento = yaml.safe_load((home / "bentos" / name / version / "bento.yaml").read_text())
    (model,) = [m["tag"] for service in bento["services"] for m in service["models"]]
    model_name, model_version = model.split(":")
    meta = json.loads((home / "models" / model_name / model_version / bundle.META_FILE).read_text())
    assert meta["version"] == "1"
