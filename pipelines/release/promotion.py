"""`make promote` and `make rollback`: the gate's decision, applied to the MLflow registry.

python -m pipelines promote                        # challenger vs champion, promote if it passes
python -m pipelines rollback --reason "why"        # champion one step back along its history
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.core import files, stores
from pipelines.core.errors import PipelineError
from pipelines.core.layout import Layout
from pipelines.data.splitting import features_and_target
from pipelines.modeling import metrics, runs
from pipelines.release import gate, registry


def baseline_scores(
    train: pd.DataFrame, holdout: pd.DataFrame, data: dict, positive: Any, metric: str
) -> dict:
    """The trivial model's scores (majority class / mean), on the metrics the gate compares."""
    from sklearn.dummy import DummyClassifier, DummyRegressor

    X, y = features_and_target(train, data["target"], data["ignore"])
    Xh, yh = features_and_target(holdout, data["target"], data["ignore"])
    task = data["task"]
    dummy = DummyClassifier(strategy="prior") if task == "classification" else DummyRegressor()
    scores = metrics.evaluate(dummy.fit(X, y), Xh, yh, task, positive)
    keep = [metric, "accuracy"] if task == "classification" else [metric]
    return {name: scores[name] for name in dict.fromkeys(keep)}


def champion_today(
    client: Any, name: str, X: pd.DataFrame, y: pd.Series, task: str, positive: Any
) -> tuple[Any, dict[str, float]] | None:
    """The registry's champion version and its scores on today's holdout, or None without one."""
    import mlflow

    champion = registry.champion_version(client, name)
    if champion is None:
        return None
    model = mlflow.sklearn.load_model(f"models:/{name}@{registry.CHAMPION}")
    return champion, metrics.evaluate(model, X, y, task, positive)


def record(decision: dict, params: dict, root: Path) -> None:
    """The decision as JSON: the latest in paths.promotion, and appended to the store's log."""
    files.write_json(decision, params["paths"]["promotion"])
    files.append_jsonl(decision, stores.mlflow_store(root, params) / "promotions.jsonl")


def run_promotion(root: Path, params: dict) -> dict:
    import mlflow

    if stores.main_root(root) != root:
        raise PipelineError("promotion never runs inside a DVC experiment's temporary workspace")
    rules, data, paths = params["promote"], params["data"], params["paths"]
    runs.use_project_experiment(root, params)
    client = mlflow.MlflowClient()
    name = rules["registered_model"]

    layout = Layout.from_paths(paths)
    scores = layout.read_holdout_scores(list(params["train"]["candidates"]))
    rules = gate.rules_for(rules, data["task"], set.intersection(*(set(s) for s in scores.values())))
    challenger = gate.pick_challenger(scores, rules["primary_metric"])
    trained = layout.read_run(challenger)
    holdout = pd.read_parquet(paths["holdout"])
    champion = registry.champion_version(client, name)

    decision: dict[str, Any] = {
        "at": registry.now(),
        "registered_model": name,
        "challenger": challenger,
        "challenger_run_id": trained["run_id"],
        "challenger_scores": scores[challenger],
        "champion_version": champion.version if champion else None,
        "champion_run_id": champion.run_id if champion else None,
    }
    if champion is not None and champion.run_id == trained["run_id"]:
        decision.update(
            promoted=False,
            reasons=[f"{challenger} (run {trained['run_id']}) is already champion v{champion.version}"],
        )
        return decision

    champion_scores = None
    if champion is not None:
        X, y = features_and_target(holdout, data["target"], data["ignore"])
        _, champion_scores = champion_today(client, name, X, y, data["task"], trained["positive_class"])
        decision["champion_scores_today"] = champion_scores
    baseline = baseline_scores(
        pd.read_parquet(paths["train"]), holdout, data, trained["positive_class"], rules["primary_metric"]
    )
    decision["baseline_scores"] = baseline
    verdict = gate.decide(scores[challenger], champion_scores, baseline, rules)
    decision.update(promoted=verdict.promote, reasons=verdict.reasons)

    if verdict.promote:
        run = client.get_run(trained["run_id"])
        tags = runs.lineage_of(run.data.tags)
        tags.update(
            {
                "run_id": trained["run_id"],
                "candidate": challenger,
                "positive_class": str(trained["positive_class"]),
            }
        )
        decision["version"] = registry.promote(client, name, trained["model_uri"], tags)
    client.set_tag(trained["run_id"], "promotion.decision", "promoted" if verdict.promote else "refused")
    client.set_tag(trained["run_id"], "promotion.reasons", "; ".join(verdict.reasons)[:4900])
    return decision


def run_rollback(root: Path, params: dict, reason: str) -> dict:
    import mlflow

    runs.use_project_experiment(root, params)
    name = params["promote"]["registered_model"]
    current, restored = registry.rollback(mlflow.MlflowClient(), name, reason)
    return {
        "at": registry.now(),
        "registered_model": name,
        "rollback": True,
        "from_version": current,
        "champion_version": restored,
        "reasons": [reason],
    }


def summary(decision: dict) -> str:
    """The decision as the one line `make promote` / `make rollback` print."""
    if decision.get("rollback"):
        return (
            f"ROLLED BACK {decision['registered_model']}: v{decision['from_version']} -> "
            f"v{decision['champion_version']} ({decision['reasons'][0]})"
        )
    if decision["promoted"]:
        return (
            f"PROMOTED {decision['challenger']} as {decision['registered_model']} v{decision['version']}: "
            + "; ".join(decision["reasons"])
        )
    kept = decision["champion_version"] is not None and decision["challenger_run_id"] == decision.get(
        "champion_run_id"
    )
    return f"{'KEPT' if kept else 'REFUSED'} {decision['challenger']}: {decision['reasons'][0]}"
