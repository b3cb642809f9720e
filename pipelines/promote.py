"""`make promote` and `make rollback`: the gate's decision, applied to the MLflow registry.

python -m pipelines.promote                      # challenger vs champion, promote if it passes
python -m pipelines.promote --rollback --reason "why"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines import config, dataio, gate, metrics, registry, tracking
from pipelines.errors import PipelineError
from pipelines.split import features_and_target


def baseline_scores(
    train: pd.DataFrame, holdout: pd.DataFrame, data: dict, positive: Any, metric: str
) -> dict:
    """The trivial model's scores (majority class / mean), on the metrics the gate compares."""
    from sklearn.dummy import DummyClassifier, DummyRegressor

    X, y = features_and_target(train, data["target"], data["ignore"])
    Xh, yh = features_and_target(holdout, data["target"], data["ignore"])
    task = data["task"]
    dummy = DummyClassifier(strategy="prior") if task == "classification" else DummyRegressor()
    scores = metrics.score_model(dummy.fit(X, y), Xh, yh, task, positive)
    keep = [metric, "accuracy"] if task == "classification" else [metric]
    return {name: scores[name] for name in dict.fromkeys(keep)}


def candidate_scores(paths: dict, names: list[str]) -> dict[str, dict[str, float]]:
    return {n: dataio.read_json(Path(paths["metrics"]) / "holdout" / f"{n}.json") for n in names}


def record(decision: dict, params: dict, root: Path) -> None:
    """The decision as JSON: the latest in paths.promotion, and appended to the store's log."""
    dataio.write_json(decision, params["paths"]["promotion"])
    dataio.append_jsonl(decision, tracking.store_dir(root, params["tracking"]["store"]) / "promotions.jsonl")


def run_promotion(root: Path, params: dict) -> dict:
    import mlflow

    if config.main_root(root) != root:
        raise PipelineError("promotion never runs inside a DVC experiment's temporary workspace")
    rules, data, paths = params["promote"], params["data"], params["paths"]
    tracking.use_experiment(
        params["tracking"]["experiment"], tracking.store_dir(root, params["tracking"]["store"])
    )
    client = mlflow.MlflowClient()
    name = rules["registered_model"]

    scores = candidate_scores(paths, list(params["train"]["candidates"]))
    rules = gate.rules_for(rules, data["task"], set.intersection(*(set(s) for s in scores.values())))
    challenger = gate.pick_challenger(scores, rules["primary_metric"])
    trained = dataio.read_json(Path(paths["models"]) / challenger / "run.json")
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
        model = mlflow.sklearn.load_model(f"models:/{name}@{registry.CHAMPION}")
        X, y = features_and_target(holdout, data["target"], data["ignore"])
        champion_scores = metrics.score_model(model, X, y, data["task"], trained["positive_class"])
        decision["champion_scores_today"] = champion_scores
    baseline = baseline_scores(
        pd.read_parquet(paths["train"]), holdout, data, trained["positive_class"], rules["primary_metric"]
    )
    decision["baseline_scores"] = baseline
    verdict = gate.decide(scores[challenger], champion_scores, baseline, rules)
    decision.update(promoted=verdict.promote, reasons=verdict.reasons)

    if verdict.promote:
        run = client.get_run(trained["run_id"])
        tags = {k: v for k, v in run.data.tags.items() if k.startswith("lineage.")}
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

    tracking.use_experiment(
        params["tracking"]["experiment"], tracking.store_dir(root, params["tracking"]["store"])
    )
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollback", action="store_true")
    parser.add_argument("--reason", default="manual rollback")
    args = parser.parse_args(argv)
    try:
        root = config.project_root()
        params = config.load_params(root / config.PARAMS_FILE)
        if args.rollback:
            decision = run_rollback(root, params, args.reason)
            line = f"ROLLED BACK {decision['registered_model']}: v{decision['from_version']} -> v{decision['champion_version']} ({args.reason})"
        else:
            decision = run_promotion(root, params)
            kept = decision["champion_version"] is not None and decision["challenger_run_id"] == decision.get(
                "champion_run_id"
            )
            verb = "PROMOTED" if decision["promoted"] else "KEPT" if kept else "REFUSED"
            line = f"{verb} {decision['challenger']}: {decision['reasons'][0]}"
            if decision["promoted"]:
                line = f"PROMOTED {decision['challenger']} as {decision['registered_model']} v{decision['version']}: {'; '.join(decision['reasons'])}"
        record(decision, params, root)
    except PipelineError as exc:
        print(f"ERROR promote: {exc}", file=sys.stderr)
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
