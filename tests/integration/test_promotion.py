"""Promotion and rollback against a real MLflow registry (SQLite store in a temporary folder).

The candidates and the store come from tests/champion_support.py.
"""

from pathlib import Path

import pytest
from helpers.champion import champion, project, train_candidate  # noqa: F401 - fixture

from pipelines.core.errors import PipelineError
from pipelines.release import promotion, registry

pytestmark = pytest.mark.integration


def test_gate_promotes_refuses_and_rolls_back(project):
    root, params = project
    train_candidate(params, hide=["x1", "x2"])
    first = promotion.run_promotion(root, params)
    assert first["promoted"] and champion(params) == "1"

    again = promotion.run_promotion(root, params)  # same challenger twice: promoted once
    assert not again["promoted"] and champion(params) == "1"

    worse = train_candidate(params, hide=["x1", "x2", "color"])
    refused = promotion.run_promotion(root, params)
    assert not refused["promoted"], refused["reasons"]
    assert refused["champion_scores_today"]["roc_auc"] > worse["roc_auc"]
    assert champion(params) == "1"

    train_candidate(params, hide=["x1"])
    assert promotion.run_promotion(root, params)["promoted"] and champion(params) == "2"
    train_candidate(params, hide=[])
    assert promotion.run_promotion(root, params)["promoted"] and champion(params) == "3"

    import mlflow

    client = mlflow.MlflowClient()
    name = params["promote"]["registered_model"]
    assert str(client.get_model_version_by_alias(name, registry.PREVIOUS).version) == "2"
    promotion.run_rollback(root, params, "bad canary")
    assert champion(params) == "2"
    promotion.run_rollback(root, params, "still bad")
    assert champion(params) == "1"
    with pytest.raises(PipelineError, match="no previous champion"):
        promotion.run_rollback(root, params, "nothing left")
    versions = {str(v.version) for v in client.search_model_versions(f"name='{name}'")}
    assert versions == {"1", "2", "3"}  # rollback never loses a version
    assert client.get_model_version(name, "3").tags["rollback_reason"] == "bad canary"


def test_experiment_workspace_never_promotes(project):
    root, params = project
    train_candidate(params, hide=[])
    exp_root = root / ".dvc" / "tmp" / "exps" / "tmpabc"
    exp_root.mkdir(parents=True)
    with pytest.raises(PipelineError, match="experiment"):
        promotion.run_promotion(exp_root, params)
    assert champion(params) is None


def test_an_edited_scores_file_does_not_promote_a_worse_model(project):
    """The gate re-scores the challenger from its logged model: the file only picks it."""
    import json

    from pipelines.core.layout import Layout

    root, params = project
    train_candidate(params, hide=[])
    assert promotion.run_promotion(root, params)["promoted"]
    worse = train_candidate(params, hide=["x1", "x2", "color"])
    scores = Layout.from_paths(params["paths"]).holdout_scores("cand")
    claimed = {**worse, "roc_auc": 1.0, "log_loss": 0.0, "accuracy": 1.0}
    scores.write_text(json.dumps(claimed))
    decision = promotion.run_promotion(root, params)
    assert not decision["promoted"] and champion(params) == "1"
    assert decision["challenger_scores"]["roc_auc"] == pytest.approx(worse["roc_auc"], abs=1e-9)
    assert decision["challenger_scores_file"]["roc_auc"] == 1.0
    assert any("says roc_auc 1.0000" in r and "re-score" in r for r in decision["reasons"])


def test_the_decision_records_the_digest_the_registry_version_carries(project):
    import hashlib

    import mlflow

    from pipelines.release import artifacts

    root, params = project
    train_candidate(params, hide=[])
    decision = promotion.run_promotion(root, params)
    version = mlflow.MlflowClient().get_model_version(params["promote"]["registered_model"], "1")
    assert version.tags[artifacts.DIGEST_TAG] == decision["challenger_sha256"]
    assert version.tags[registry.STATE_TAG] == registry.DONE
    local = mlflow.artifacts.download_artifacts(f"models:/{version.name}/1")
    digest = hashlib.sha256((Path(local) / "model.skops").read_bytes()).hexdigest()
    assert digest == decision["challenger_sha256"]


def test_a_crash_between_registration_and_alias_is_repaired_by_the_next_run(project, monkeypatch):
    import json

    import mlflow

    root, params = project
    name = params["promote"]["registered_model"]
    train_candidate(params, hide=["x1", "x2"])
    assert promotion.run_promotion(root, params)["promoted"]
    train_candidate(params, hide=[])
    real = mlflow.register_model

    def register_then_crash(*args, **kwargs):
        real(*args, **kwargs)
        raise RuntimeError("killed after registration")

    monkeypatch.setattr(mlflow, "register_model", register_then_crash)
    with pytest.raises(RuntimeError, match="killed"):
        promotion.run_promotion(root, params)
    client = mlflow.MlflowClient()
    assert client.get_model_version(name, "2").tags[registry.STATE_TAG] == registry.PENDING
    assert champion(params) == "1"

    monkeypatch.setattr(mlflow, "register_model", real)
    decision = promotion.run_promotion(root, params)
    assert decision["promoted"] and decision["version"] == "3" and champion(params) == "3"
    assert any("v2" in note and "abandoned" in note for note in decision["repairs"])
    assert client.get_model_version(name, "2").tags[registry.STATE_TAG] == registry.ABANDONED
    assert json.loads(client.get_registered_model(name).tags[registry.HISTORY_TAG]) == ["1", "3"]
    assert str(client.get_model_version_by_alias(name, registry.PREVIOUS).version) == "1"


@pytest.mark.timeout(600)
def test_two_promotions_at_once_register_one_version(project):
    """Two real `python -m pipelines promote` processes race on one project: one version."""
    import subprocess
    import sys

    import mlflow
    import yaml
    from helpers.champion import default_store_env

    root, params = project
    train_candidate(params, hide=[])
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "pipelines", "promote"]
    env = default_store_env(root)
    racers = [
        subprocess.Popen(
            command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [racer.communicate(timeout=300) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    firsts = sorted(out.split(" ", 1)[0] for out, _ in outputs)
    assert firsts == ["KEPT", "PROMOTED"], outputs
    name = params["promote"]["registered_model"]
    assert len(mlflow.MlflowClient().search_model_versions(f"name='{name}'")) == 1
