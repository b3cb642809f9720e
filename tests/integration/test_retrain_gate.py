"""The gate's second window (the fresh holdout) and `rollout.on_pass: rollout`, on a real SQLite
MLflow registry (tests/helpers/champion.py's small project, no DVC)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.champion import champion, make_frame, project, train_candidate  # noqa: F401 - fixture
from helpers.support import PROJECT
from sklearn.metrics import roc_auc_score

from pipelines.core import files, stores
from pipelines.release import on_pass, promotion, registry

pytestmark = pytest.mark.integration


def reversed_frame(n: int, seed: int) -> pd.DataFrame:
    """Rows where x1 now pushes the label the other way: a model that leans on x1 does worse."""
    frame = make_frame(n, seed)
    rng = np.random.default_rng(seed + 100)
    logit = -2 * frame["x1"] - frame["x2"] + (frame["color"] == "red")
    frame["label"] = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return frame


def model_auc(params: dict, version: str, frame: pd.DataFrame) -> float:
    import mlflow

    model = mlflow.sklearn.load_model(f"models:/{params['promote']['registered_model']}/{version}")
    proba = model.predict_proba(frame.drop(columns=["label", "id"]))[:, list(model.classes_).index("yes")]
    return roc_auc_score(frame["label"] == "yes", proba)


def test_a_challenger_better_on_the_fixed_holdout_but_worse_on_fresh_rows_is_refused(project):
    root, params = project
    train_candidate(params, hide=["x1"])  # the champion ignores x1
    assert promotion.run_promotion(root, params)["promoted"] and champion(params) == "1"
    fresh = reversed_frame(400, 7)
    params["paths"]["fresh_holdout"] = str(root / "fresh.parquet")
    files.write_parquet(fresh, params["paths"]["fresh_holdout"])
    params["retrain"] = {"fresh_min_delta": 0.0}
    train_candidate(params, hide=[])  # better on the fixed holdout, misled by x1 on the fresh rows

    decision = promotion.run_promotion(root, params, {"retrain": {"trigger": "drift"}})
    assert not decision["promoted"] and champion(params) == "1"
    assert decision["holdouts"]["fixed"]["passed"] and not decision["holdouts"]["fresh"]["passed"]
    assert decision["reasons"][0].startswith("fresh holdout roc_auc")
    assert decision["retrain"] == {"trigger": "drift"} and decision["fresh_holdout_rows"] == 400
    # Independent oracle: the champion's AUC on the fresh rows, from sklearn on the loaded model.
    assert decision["champion_scores_fresh"]["roc_auc"] == pytest.approx(
        model_auc(params, "1", fresh), abs=1e-9
    )
    assert decision["challenger_scores_fresh"]["roc_auc"] < decision["champion_scores_fresh"]["roc_auc"]


def test_on_pass_rollout_registers_without_crowning_and_starts_a_shadow_rollout(project):
    import mlflow

    root, params = project
    params["rollout"] = yaml.safe_load((PROJECT / "params.yaml").read_text())["rollout"]
    params["rollout"]["on_pass"] = "rollout"
    train_candidate(params, hide=["x1", "x2"])
    first = on_pass.apply(root, params, promotion.run_promotion(root, params), reason="test")
    assert first["on_pass"] == "champion" and champion(params) == "1"  # no champion yet: crowned

    train_candidate(params, hide=[])
    decision = on_pass.apply(root, params, promotion.run_promotion(root, params), reason="retrain (labels)")
    assert decision["promoted"] and decision["on_pass"] == "rollout" and decision["rollout_started"]
    assert champion(params) == "1" and decision["version"] == "2"
    client = mlflow.MlflowClient()
    name = params["promote"]["registered_model"]
    assert str(client.get_model_version_by_alias(name, registry.CHALLENGER).version) == "2"
    state = registry.rollout_state(client, name)
    assert state["mode"] == "shadow" and state["challenger"] == "2"
    assert promotion.summary(decision).startswith(
        "REGISTERED cand as test-model v2 (challenger, rollout in shadow)"
    )
    again = promotion.run_promotion(root, params)  # the same run twice: registered once
    assert not again["promoted"] and "already challenger v2" in again["reasons"][0]
    versions = client.search_model_versions(f"name='{name}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    log = (stores.mlflow_store(root, params) / registry.DECISIONS_FILE).read_text()
    assert '"rollout": "start"' in log
