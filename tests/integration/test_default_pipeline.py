"""The real pipeline (`dvc repro`, `dvc exp run`, `dvc push/pull`) on the default data.

All tests share one successful run (the session fixture `default_project`); the ones that change
the copy restore it. The determinism test reruns everything and therefore comes last.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.project_copy import DATA_OUTPUTS, Project, lock_out_md5s, md5, metrics_files, mlflow_store
from helpers.support import TRACEBACK, error_lines, git_head, run, write_yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]


# a. The default run.


def test_default_run_scores_every_candidate(default_project: Project) -> None:
    root = default_project.root
    assert default_project.candidates, "params.yaml names no candidates"
    for key in default_project.candidates:
        scores = json.loads((root / "metrics" / "holdout" / f"{key}.json").read_text())
        assert scores["roc_auc"] > 0.8, (key, scores)
        assert scores["accuracy"] > 0.735, (key, scores)  # beats always predicting "No"
        cv = json.loads((root / "metrics" / "cv" / f"{key}.json").read_text())
        assert len(cv["roc_auc"]["folds"]) == default_project.params["train"]["cv_folds"]
        for kind in ("roc", "precision_recall", "confusion", "importance"):
            assert len(pd.read_csv(root / "plots" / kind / f"{key}.csv")) > 0, (key, kind)
        assert (root / "reports" / f"train-{key}.html").is_file()
    assert (root / "reports" / "explore.html").is_file()
    report = json.loads((root / "reports" / "validation.json").read_text())
    assert report["passed"] and not report["contract_inferred_now"]  # the committed contract
    assert run(["dvc", "status", "--json"], root, timeout=300, check=True).stdout.strip() in ("{}", "")


def test_mlflow_run_per_candidate_with_lineage_and_model(default_project: Project) -> None:
    root = default_project.root
    raw = root / "data" / "raw" / "snapshot.parquet"
    raw_md5 = md5(raw)
    assert lock_out_md5s(root)["data/raw/snapshot.parquet"] == raw_md5  # DVC's hash is plain MD5
    with mlflow_store(root) as client:
        _check_runs(default_project, client, raw_md5)


def _check_runs(default_project: Project, client, raw_md5: str) -> None:
    import mlflow

    root = default_project.root
    experiment = client.get_experiment_by_name(default_project.params["tracking"]["experiment"])
    assert experiment is not None
    assert experiment.artifact_location.startswith((root / "mlruns").as_uri())
    hashes = set()
    holdout = pd.read_parquet(root / "data" / "processed" / "holdout.parquet")
    features = holdout.drop(columns=["churn", "customer_id"]).head(20)
    # As read: the signature declares the integer columns as integers (long).
    for key in default_project.candidates:
        info = json.loads((root / "models" / key / "run.json").read_text())
        run_ = client.get_run(info["run_id"])
        tags = run_.data.tags
        assert run_.info.experiment_id == experiment.experiment_id
        assert run_.info.status == "FINISHED"
        assert tags["candidate"] == key
        assert tags["lineage.git_commit"] == git_head(root)
        assert tags["lineage.data_md5"] == raw_md5
        assert re.fullmatch(r"[0-9a-f]{16}", tags["lineage.params_hash"])
        hashes.add(tags["lineage.params_hash"])
        holdout_scores = json.loads((root / "metrics" / "holdout" / f"{key}.json").read_text())
        assert run_.data.metrics["holdout_roc_auc"] == pytest.approx(holdout_scores["roc_auc"])
        # The logged model exists, belongs to this run, and loads and predicts (skops, no pickle).
        model_info = mlflow.models.get_model_info(info["model_uri"])
        assert model_info.run_id == info["run_id"]
        model = mlflow.pyfunc.load_model(info["model_uri"])
        predicted = model.predict(features)
        assert set(pd.Series(predicted).astype(str)) <= {"Yes", "No"}
        assert len(predicted) == 20
    assert len(hashes) == len(default_project.candidates)  # each candidate's own params


# g. One candidate's hyperparameter reruns only that candidate.


def test_changing_one_candidate_reruns_only_its_stage(default_project: Project) -> None:
    root = default_project.root
    params_file = root / "params.yaml"
    original = params_file.read_bytes()
    params = yaml.safe_load(original)
    key = default_project.candidates[min(1, len(default_project.candidates) - 1)]
    hyper = params["train"]["candidates"][key]["params"]
    name = next(k for k, v in hyper.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    hyper[name] = hyper[name] * 2
    try:
        write_yaml(params, params_file)
        status = json.loads(default_project.dvc("status", "--json", timeout=300, check=True).stdout)
        dry = default_project.dvc("repro", "--dry", timeout=300, check=True).stdout
    finally:
        params_file.write_bytes(original)
    ran = re.findall(r"Running stage '([^']+)'", dry)
    for stages in (list(status), ran):
        # Only this candidate trains again; nothing upstream reruns. Stages that aggregate
        # every candidate's results (downstream of train) may follow.
        assert [s for s in stages if s.startswith("train@")] == [f"train@{key}"], stages
        assert not set(stages) & {"ingest", "explore", "split"}, stages
    assert ran[0] == f"train@{key}"
    assert json.loads(default_project.dvc("status", "--json", timeout=300, check=True).stdout) == {}


# f. dvc push to a local remote, dvc pull into a fresh clone.


def test_push_and_pull_restore_identical_data(default_project: Project, tmp_path: Path) -> None:
    root = default_project.root
    remote = tmp_path / "remote"
    default_project.dvc("remote", "add", "--default", "--force", "tmp", str(remote), timeout=120, check=True)
    run(["git", "add", "-A"], root, check=True)
    run(["git", "commit", "-q", "-m", "results and a local remote"], root, check=True)
    default_project.dvc("push", timeout=600, check=True)
    assert any(p.is_file() for p in remote.rglob("*"))

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path, check=True)
    assert not (clone / "data" / "raw" / "snapshot.parquet").exists()
    run(["dvc", "pull"], clone, timeout=600, check=True)
    processed = sorted(
        p.relative_to(root).as_posix() for p in (root / "data" / "processed").glob("*.parquet")
    )
    paths = ["data/raw/snapshot.parquet", *processed]
    assert len(paths) >= 3
    for name in paths:
        assert (clone / name).read_bytes() == (root / name).read_bytes(), name
    assert json.loads(run(["dvc", "status", "--json"], clone, timeout=300, check=True).stdout or "{}") == {}


# e. An experiment in a temporary workspace logs into the project's own store.


def test_temp_experiment_logs_into_the_project_store(default_project: Project) -> None:
    root = default_project.root
    # A champion exists before the experiment; the experiment must leave it alone.
    promoted = default_project.promote()
    assert promoted.returncode == 0 and promoted.stdout.startswith(("PROMOTED", "KEPT", "REFUSED")), (
        promoted.stderr
    )
    registered = default_project.params["promote"]["registered_model"]
    with mlflow_store(root) as client:
        experiment = client.get_experiment_by_name(default_project.params["tracking"]["experiment"])
        before = {r.info.run_id for r in client.search_runs([experiment.experiment_id])}
        champion_before = client.get_model_version_by_alias(registered, "champion").version
        versions_before = len(client.search_model_versions(f"name='{registered}'"))
    key = default_project.candidates[0]
    assert default_project.params["train"]["candidates"][key]["model"] == "linear"

    result = default_project.dvc("exp", "run", "--temp", "-S", f"train.candidates.{key}.classification.C=0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    name = re.search(r"Ran experiment\(s\): (\S+)", result.stdout).group(1)

    with mlflow_store(root) as client:
        runs = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_id not in before]
        assert client.get_model_version_by_alias(registered, "champion").version == champion_before
        assert len(client.search_model_versions(f"name='{registered}'")) == versions_before
    assert len(runs) == 1, "the experiment's run is not in the project's store"
    new = runs[0]
    assert new.data.tags["candidate"] == key
    # The model the experiment logged has the new value (from the candidate's classification block).
    with mlflow_store(root) as client:
        (logged,) = client.search_logged_models(
            [experiment.experiment_id], filter_string=f"source_run_id = '{new.info.run_id}'"
        )
        from pipelines.release import artifacts  # the project's trust rules, not the artifact's

        assert artifacts.load(logged.model_uri, "logged model").model.named_steps["model"].C == 0.5
    assert Path(new.info.artifact_uri.removeprefix("file://")).is_relative_to(root / "mlruns")
    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db"))
    # The workspace is untouched by a --temp experiment.
    assert json.loads(default_project.dvc("status", "--json", timeout=300, check=True).stdout) == {}

    shown = default_project.dvc("exp", "show", "--json", timeout=300, check=True).stdout
    found = {}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("name") and isinstance(node.get("data"), dict):
                params = node["data"].get("params", {}).get("params.yaml", {}).get("data", {})
                found[node["name"]] = (
                    params.get("train", {})
                    .get("candidates", {})
                    .get(key, {})
                    .get("classification", {})
                    .get("C")
                )
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(shown))
    assert found.get(name) == 0.5, found
    default_project.dvc("exp", "show", "--no-pager", timeout=300, check=True)  # the table renders
    table = default_project.dvc("exp", "show", "--csv", timeout=300, check=True).stdout
    assert name in table


# d. Bad inputs: one readable line, no traceback, dvc.lock untouched.


@dataclass
class BadInput:
    name: str
    stage: str  # the stage whose line reports it (nbrun names it after its output notebook)
    words: list[str]
    params: Callable[[dict], None] | None = None
    source: Callable[[pd.DataFrame, Path], None] | None = None
    extra: dict = field(default_factory=dict)


def _set(path: str, value: object) -> Callable[[dict], None]:
    def apply(params: dict) -> None:
        node = params
        *parents, last = path.split(".")
        for part in parents:
            node = node[part]
        node[last] = value

    return apply


def _empty(frame: pd.DataFrame, path: Path) -> None:
    path.write_bytes(b"")


def _header_only(frame: pd.DataFrame, path: Path) -> None:
    path.write_text(",".join(frame.columns) + "\n")


def _without_target(frame: pd.DataFrame, path: Path) -> None:
    frame.drop(columns=["churn"]).to_csv(path, index=False)


def _text_in_numbers(frame: pd.DataFrame, path: Path) -> None:
    frame = frame.astype({"tenure": str})
    frame.loc[3, "tenure"] = "twelve"
    frame.to_csv(path, index=False)


def _extra_column(frame: pd.DataFrame, path: Path) -> None:
    frame.assign(loyalty_points=1).to_csv(path, index=False)


BAD_INPUTS = [
    BadInput("empty source file", "ingest", ["telco_churn.csv", "empty"], source=_empty),
    BadInput("header-only CSV", "ingest", ["telco_churn.csv", "no rows"], source=_header_only),
    BadInput(
        "missing target column",
        "ingest",
        ["'churn'", "not a column"],
        source=_without_target,
    ),
    BadInput(
        "wrong type",
        "ingest",
        ["'tenure'", "wrong type", "int64"],
        source=_text_in_numbers,
    ),
    BadInput(
        "unknown column",
        "ingest",
        ["'loyalty_points'", "not in the contract"],
        source=_extra_column,
    ),
    BadInput(
        "unknown task",
        "ingest",
        ["data.task", "'clustering'", "unknown"],
        params=_set("data.task", "clustering"),
    ),
    BadInput(
        "target not a column",
        "ingest",
        ["data.target", "'churned'", "not a column"],
        params=_set("data.target", "churned"),
    ),
    BadInput(
        "unknown model",
        "train-linear",
        ["train.candidates.linear.model", "'xgboost'", "unknown"],
        params=_set("train.candidates.linear.model", "xgboost"),
    ),
    BadInput(
        "bad hyperparameter",
        "train-linear",
        ["train.candidates.linear.classification", "'C'"],
        params=_set("train.candidates.linear.classification.C", -1.0),
    ),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.name for c in BAD_INPUTS])
def test_bad_input_fails_with_one_readable_line(default_project: Project, case: BadInput) -> None:
    root = default_project.root
    assert default_project.candidates[0] == "linear"
    tracked = default_project.tracked_files()
    lock_before = (root / "dvc.lock").read_bytes()
    source = root / default_project.params["data"]["source"]
    try:
        if case.source:
            case.source(pd.read_csv(source), source)
        if case.params:
            params = default_project.params
            case.params(params)
            write_yaml(params, root / "params.yaml")
        result = default_project.dvc("repro", timeout=900)
        lock_after = (root / "dvc.lock").read_bytes()
    finally:
        default_project.restore(tracked)

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert TRACEBACK not in output
    lines = error_lines(result.stderr)
    assert len(lines) == 1, f"expected one ERROR line, got {lines}\n{result.stderr[-2000:]}"
    line = lines[0]
    assert line.startswith(f"ERROR {case.stage}: "), line
    for word in case.words:
        assert word in line, (word, line)

    if lock_after != lock_before:
        before = yaml.safe_load(lock_before)["stages"]
        after = yaml.safe_load(lock_after)["stages"]
        changed = sorted(s for s in set(before) | set(after) if before.get(s) != after.get(s))
        pytest.fail(f"dvc.lock changed after a failed run: stages {changed}")


# b. Determinism: everything again, the same bytes.


def test_forced_rerun_is_byte_identical(default_project: Project) -> None:
    root = default_project.root
    result = default_project.dvc("repro", "-f")
    assert result.returncode == 0, result.stderr[-3000:]
    lock = lock_out_md5s(root)
    for name in DATA_OUTPUTS:
        assert lock[name] == default_project.first_lock[name], name
        assert md5(root / name) == lock[name], name
    now = metrics_files(root)
    assert set(now) == set(default_project.first_metrics)
    for name, data in default_project.first_metrics.items():
        assert now[name] == data, name
    for name in now:
        for value in json.loads(now[name]).values():
            mean = value["mean"] if isinstance(value, dict) else value
            assert math.isfinite(mean), name
