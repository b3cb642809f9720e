"""Promotion and rollback against a real MLflow registry (SQLite store in a temporary folder).

The candidates and the store come from tests/champion_support.py.
"""

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
