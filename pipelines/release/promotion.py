"""`make promote` and `make rollback`: the gate's decision, applied to the MLflow registry.

python -m pipelines promote                        # challenger vs champion, promote if it passes
python -m pipelines rollback --reason "why"        # champion one step back along its history

The gate judges the fixed holdout (the source's split, which new data never moves) and, once
`make retrain` has added labelled rows, the fresh holdout too (the freshest of them): the
challenger must win on both. What a pass does follows params.yaml `rollout.on_pass`: `champion`
crowns the version; `rollout` registers it without moving champion, and pipelines/release/on_pass.py
then starts its rollout in shadow, once this module's lock is released.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.core import files, stores
from pipelines.core.errors import PipelineError
from pipelines.core.layout import Layout
from pipelines.data.splitting import features_and_target
from pipelines.modeling import metrics, runs
from pipelines.release import artifacts, gate, registry

# Re-scoring a model on the same rows repeats the train stage's scores up to float noise; a
# larger gap means the scores file is not this model's (edited, or stale).
SCORE_TOLERANCE = 1e-6


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


def score(loaded: artifacts.LoadedArtifact, holdout: pd.DataFrame, data: dict, positive: Any) -> dict:
    """A loaded model's scores on the holdout, as the train stage computes them."""
    X, y = features_and_target(holdout, data["target"], data["ignore"])
    return metrics.evaluate(loaded.model, X, y, data["task"], positive)


def champion_artifact(client: Any, name: str, champion: Any) -> tuple[artifacts.LoadedArtifact, list[str]]:
    """The champion's model, verified against its recorded digest. A champion promoted before
    digests were recorded has none: its bytes, loaded by every other trust rule, are recorded now
    (and the note says so), so that `make package` can verify them."""
    loaded = artifacts.load_version(name, champion, require_digest=False)
    if artifacts.recorded_digest(champion) is not None:
        return loaded, []
    client.set_model_version_tag(name, champion.version, artifacts.DIGEST_TAG, loaded.sha256)
    return loaded, [
        f"champion v{champion.version} had no {artifacts.DIGEST_TAG}: recorded from the bytes loaded now"
    ]


def champion_today(
    client: Any, name: str, holdout: pd.DataFrame, data: dict, positive: Any
) -> tuple[Any, dict[str, float], list[str]] | None:
    """The registry's champion version, its scores on today's holdout, and notes; None without one.
    A champion whose artifacts are missing or refused stops the promotion with one line."""
    champion = registry.champion_version(client, name)
    if champion is None:
        return None
    loaded, notes = champion_artifact(client, name, champion)
    return champion, score(loaded, holdout, data, positive), notes


def disagreements(claimed: dict[str, float], rescored: dict[str, float], source: str) -> list[str]:
    """Where the scores file says something the re-score does not: an edited or stale file."""
    return [
        f"{source} says {metric} {claimed[metric]:.4f}, the re-score {rescored[metric]:.4f}: "
        "the gate decided on the re-score"
        for metric in sorted(set(claimed) & set(rescored))
        if not math.isclose(claimed[metric], rescored[metric], rel_tol=0, abs_tol=SCORE_TOLERANCE)
    ]


def record(decision: dict, params: dict, root: Path) -> None:
    """The decision as JSON: the latest in paths.promotion, and appended to the store's log."""
    files.write_json(decision, params["paths"]["promotion"])
    files.append_jsonl(decision, stores.mlflow_store(root, params) / registry.DECISIONS_FILE)


ON_PASS = ("champion", "rollout")  # params.yaml rollout.on_pass (pipelines/release/rollout.py checks it too)


def on_pass(params: dict) -> str:
    """What a passing gate does: `champion` (also when params have no rollout section) or `rollout`."""
    value = (params.get("rollout") or {}).get("on_pass", "champion")
    if value not in ON_PASS:
        raise PipelineError(f"rollout.on_pass must be one of {', '.join(ON_PASS)}")
    return value


def fresh_holdout(params: dict) -> pd.DataFrame | None:
    """The freshest labelled rows (`make retrain`), or None before there are any."""
    path = params["paths"].get("fresh_holdout")
    if not path or not Path(path).is_file():
        return None
    frame = pd.read_parquet(path)
    return frame if len(frame) else None


def run_promotion(root: Path, params: dict, context: dict | None = None) -> dict:
    """The gate's decision, applied under the store's promotion lock, after repairing what a
    crashed promote or rollback left. `context` (a retrain's trigger and data versions) goes into
    the decision, and onto the challenger's run as `retrain.*` tags."""
    import mlflow

    if stores.main_root(root) != root:
        raise PipelineError("promotion never runs inside a DVC experiment's temporary workspace")
    runs.use_project_experiment(root, params)
    client = mlflow.MlflowClient()
    with registry.exclusive(stores.mlflow_store(root, params)):
        repairs = registry.repair(client, params["promote"]["registered_model"])
        decision = _promotion(client, params, context or {})
    return {**decision, "repairs": repairs} if repairs else decision


def _promotion(client: Any, params: dict, context: dict) -> dict:
    rules, data, paths = params["promote"], params["data"], params["paths"]
    passing = on_pass(params)
    name = rules["registered_model"]
    layout = Layout.from_paths(paths)
    # The scores files only pick the challenger: the gate decides on scores it computes itself.
    claimed = layout.read_holdout_scores(list(params["train"]["candidates"]))
    rules = gate.rules_for(rules, data["task"], set.intersection(*(set(s) for s in claimed.values())))
    challenger = gate.pick_challenger(claimed, rules["primary_metric"])
    trained = layout.read_run(challenger)
    holdout = pd.read_parquet(paths["holdout"])
    champion = registry.champion_version(client, name)

    decision: dict[str, Any] = {
        "at": registry.now(),
        "registered_model": name,
        "challenger": challenger,
        "challenger_run_id": trained["run_id"],
        "challenger_scores_file": claimed[challenger],
        "champion_version": champion.version if champion else None,
        "champion_run_id": champion.run_id if champion else None,
        **context,
    }
    _tag_context(client, trained["run_id"], context)
    if champion is not None and champion.run_id == trained["run_id"]:
        notes = []
        if artifacts.recorded_digest(champion) is None:  # promoted before digests: record it now
            _, notes = champion_artifact(client, name, champion)
        decision.update(
            promoted=False,
            reasons=[
                f"{challenger} (run {trained['run_id']}) is already champion v{champion.version}",
                *notes,
            ],
        )
        return decision
    waiting = registry.challenger_version(client, name)
    if waiting is not None and waiting.run_id == trained["run_id"]:
        decision.update(
            promoted=False,
            reasons=[f"{challenger} (run {trained['run_id']}) is already challenger v{waiting.version}"],
        )
        return decision

    what = f"challenger {challenger} (run {trained['run_id']})"
    candidate = artifacts.load(trained["model_uri"], what)
    positive = trained["positive_class"]
    rescored = score(candidate, holdout, data, positive)
    decision.update(challenger_scores=rescored, challenger_sha256=candidate.sha256)
    notes = disagreements(claimed[challenger], rescored, layout.holdout_scores(challenger).as_posix())

    champion_scores = champion_model = None
    if champion is not None:
        champion_model, champion_notes = champion_artifact(client, name, champion)
        champion_scores = score(champion_model, holdout, data, positive)
        decision["champion_scores_today"] = champion_scores
        notes += champion_notes
    baseline = baseline_scores(
        pd.read_parquet(paths["train"]), holdout, data, positive, rules["primary_metric"]
    )
    decision["baseline_scores"] = baseline
    fixed = gate.decide(rescored, champion_scores, baseline, rules)
    fresh = _fresh_verdict(decision, candidate, champion_model, params, rules, positive)
    verdict = gate.combine(fixed, fresh)
    decision["holdouts"] = {
        "fixed": {"passed": fixed.promote, "reasons": fixed.reasons},
        "fresh": None if fresh is None else {"passed": fresh.promote, "reasons": fresh.reasons},
    }
    decision.update(promoted=verdict.promote, reasons=[*verdict.reasons, *notes])

    if verdict.promote:
        run = client.get_run(trained["run_id"])
        tags = runs.lineage_of(run.data.tags)
        tags.update(
            {
                "run_id": trained["run_id"],
                "candidate": challenger,
                "positive_class": str(positive),
                # The bytes just re-scored: `make package` serves only these.
                artifacts.DIGEST_TAG: candidate.sha256,
            }
        )
        if passing == "rollout" and champion is not None:  # the first champion is crowned either way
            decision["version"] = registry.register(client, name, trained["model_uri"], tags)
            decision["on_pass"] = "rollout"
        else:
            decision["version"] = registry.promote(client, name, trained["model_uri"], tags)
            decision["on_pass"] = "champion"
    client.set_tag(trained["run_id"], "promotion.decision", "promoted" if verdict.promote else "refused")
    client.set_tag(trained["run_id"], "promotion.reasons", "; ".join(decision["reasons"])[:4900])
    return decision


def _fresh_verdict(
    decision: dict,
    candidate: artifacts.LoadedArtifact,
    champion: artifacts.LoadedArtifact | None,
    params: dict,
    rules: dict,
    positive: Any,
) -> gate.Decision | None:
    """The fresh holdout's verdict (None without fresh rows, or without a champion to beat there);
    both models' scores on it go into the decision."""
    fresh = fresh_holdout(params)
    if fresh is None:
        return None
    data = params["data"]
    decision["fresh_holdout_rows"] = len(fresh)
    decision["challenger_scores_fresh"] = _score_or_nan(candidate, fresh, data, positive)
    if champion is None:
        return None
    decision["champion_scores_fresh"] = _score_or_nan(champion, fresh, data, positive)
    min_delta = (params.get("retrain") or {}).get("fresh_min_delta", 0.0)
    return gate.decide_fresh(
        decision["challenger_scores_fresh"],
        decision["champion_scores_fresh"],
        rules["primary_metric"],
        min_delta,
    )


def _score_or_nan(loaded: artifacts.LoadedArtifact, frame: pd.DataFrame, data: dict, positive: Any) -> dict:
    """Scores on a small window; a metric it cannot give (one class only) is NaN, and fails the gate."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return score(loaded, frame, data, positive)
        except ValueError:
            return {}


def _tag_context(client: Any, run_id: str, context: dict) -> None:
    """A retrain's trigger and data versions, on the challenger's MLflow run."""
    for key, value in context.get("retrain", {}).items():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            client.set_tag(run_id, f"retrain.{key}", str(value)[:4900])


def run_rollback(root: Path, params: dict, reason: str) -> dict:
    import mlflow

    runs.use_project_experiment(root, params)
    name = params["promote"]["registered_model"]
    client = mlflow.MlflowClient()
    with registry.exclusive(stores.mlflow_store(root, params)):
        repairs = registry.repair(client, name)
        current, restored = registry.rollback(client, name, reason)
    decision = {
        "at": registry.now(),
        "registered_model": name,
        "rollback": True,
        "from_version": current,
        "champion_version": restored,
        "reasons": [reason],
    }
    return {**decision, "repairs": repairs} if repairs else decision


def summary(decision: dict) -> str:
    """The decision as the one line `make promote` / `make rollback` print."""
    if decision.get("rollback"):
        return (
            f"ROLLED BACK {decision['registered_model']}: v{decision['from_version']} -> "
            f"v{decision['champion_version']} ({decision['reasons'][0]})"
        )
    if decision["promoted"] and decision.get("on_pass") == "rollout":
        started = decision.get("rollout_started")
        return (
            f"REGISTERED {decision['challenger']} as {decision['registered_model']} v{decision['version']} "
            + (
                "(challenger, rollout in shadow)"
                if started
                else f"(rollout not started: {decision.get('rollout_error')})"
            )
            + ": "
            + "; ".join(decision["reasons"])
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
