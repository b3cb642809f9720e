"""`make retrain` end to end in a temporary copy of the project: a real `dvc repro`, the real gate
on a SQLite MLflow store, git commits, and a restore from a clone. One small pipeline (the linear
candidate, 2 folds), built once for the module; the tests run in order and build on each other."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.support import copy_project, error_lines, read_yaml, retrain_ready, run, write_yaml

pytestmark = pytest.mark.integration

NEW_ROWS = 300


def retrain(root: Path, *args: str):
    return run([sys.executable, "-m", "pipelines", "retrain", *args], root, timeout=900)


def lock(root: Path) -> dict:
    return yaml.safe_load((root / "dvc.lock").read_text())


def out_md5(root: Path, path: str) -> str:
    for stage in lock(root)["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] == path:
                return out["md5"]
    raise KeyError(path)


def batches(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "data" / "labelled").glob("*.parquet"))


def git(root: Path, *args: str) -> str:
    return run(["git", *args], root, check=True).stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("retrain")
    root = copy_project(base / "project")
    params = retrain_ready(read_yaml(root / "params.yaml"))
    write_yaml(params, root / "params.yaml")
    run(["dvc", "repro"], root, timeout=900, check=True)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "baseline")
    run([sys.executable, "-m", "pipelines", "promote"], root, timeout=300, check=True)
    source = pd.read_csv(root / params["data"]["source"])
    new = source.tail(NEW_ROWS).reset_index(drop=True)
    new["customer_id"] = [f"N{i:05d}" for i in range(NEW_ROWS)]  # new customers, same kind of rows
    return root, params, new, base


def test_a_bad_file_changes_nothing(project):
    root, _params, new, base = project
    bad = new.copy()
    bad.loc[7, "tenure"] = -3
    path = base / "bad.csv"
    bad.to_csv(path, index=False)
    before = (root / "dvc.lock").read_bytes()
    result = retrain(root, "--in", str(path))
    assert result.returncode == 1
    assert error_lines(result.stderr) == [result.stderr.strip()]
    assert result.stderr.startswith(
        "ERROR retrain: new labelled rows break the data contract: column 'tenure'"
    )
    assert "Traceback" not in result.stderr
    assert batches(root) == [] and (root / "dvc.lock").read_bytes() == before
    assert git(root, "status", "--porcelain", "--", "data", "dvc.lock") == ""


def test_retrain_makes_a_data_version_commits_it_and_gates(project):
    root, params, new, base = project
    path = base / "new.csv"
    new.to_csv(path, index=False)
    holdout_md5 = out_md5(root, params["paths"]["holdout"])
    train_before = pd.read_parquet(root / params["paths"]["train"])
    head_before = git(root, "rev-parse", "HEAD").strip()
    (root / "unrelated.txt").write_text("a file the retrain must not commit\n")

    result = retrain(root, "--in", str(path), "--trigger", "drift")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("RETRAINED (drift) on +300 rows")

    [batch] = batches(root)
    stored = pd.read_parquet(root / "data" / "labelled" / batch)
    assert stored["customer_id"].tolist() == new["customer_id"].tolist()
    # The fixed holdout did not move; the freshest 30 % (rounded up) of the new rows are the fresh one.
    assert out_md5(root, params["paths"]["holdout"]) == holdout_md5
    fresh = pd.read_parquet(root / params["paths"]["fresh_holdout"])
    assert fresh["customer_id"].tolist() == new["customer_id"].tolist()[-math.ceil(0.3 * NEW_ROWS) :]
    train = pd.read_parquet(root / params["paths"]["train"])
    assert len(train) == len(train_before) + NEW_ROWS - len(fresh)

    # One commit on top of the baseline, holding the data version and nothing unrelated.
    assert git(root, "rev-parse", "HEAD~1").strip() == head_before
    committed = set(git(root, "show", "--name-only", "--format=", "HEAD").split())
    assert {f"data/labelled/{batch}.dvc", "data/labelled/.gitignore", "dvc.lock"} <= committed
    assert "unrelated.txt" not in committed and "params.yaml" not in committed
    assert all(
        name.endswith(".dvc")
        or name in ("dvc.lock", "data/labelled/.gitignore")
        or name.startswith(("metrics/", "plots/", "reports/"))
        for name in committed
    ), committed
    message = git(root, "log", "-1", "--format=%B")
    assert message.startswith(f"retrain (drift): +300 labelled rows in data/labelled/{batch}")

    # The decision record: the trigger and both data versions, as dvc.lock has them.
    old_lock = yaml.safe_load(git(root, "show", "HEAD~1:dvc.lock"))
    labelled_dep = next(d for d in old_lock["stages"]["ingest"]["deps"] if d["path"] == "data/labelled")
    new_dep = next(d for d in lock(root)["stages"]["ingest"]["deps"] if d["path"] == "data/labelled")
    decision = json.loads((root / params["paths"]["promotion"]).read_text())
    info = decision["retrain"]
    assert info["trigger"] == "drift"
    assert info["data_version_old"] == labelled_dep["md5"] != info["data_version_new"] == new_dep["md5"]
    assert info["commit"] == git(root, "rev-parse", "HEAD").strip()
    assert decision["promoted"], decision["reasons"]
    assert decision["holdouts"]["fresh"]["passed"] and decision["fresh_holdout_rows"] == len(fresh)
    assert any(r.startswith("fresh holdout roc_auc") for r in decision["reasons"])
    log = [json.loads(x) for x in (root / "mlruns" / "promotions.jsonl").read_text().splitlines()]
    assert log[-1] == decision
    import mlflow

    from pipelines.core import stores

    # The copy's own store: not stores.tracking_uri, which honours the MLFLOW_TRACKING_URI that
    # `mlflow.set_tracking_uri` in an earlier test of this process set.
    uri = f"sqlite:///{stores.mlflow_store(root, params) / 'mlflow.db'}"
    tags = mlflow.MlflowClient(tracking_uri=uri).get_run(decision["challenger_run_id"]).data.tags
    assert tags["retrain.trigger"] == "drift" and tags["retrain.data_version_new"] == new_dep["md5"]
    (root / "unrelated.txt").unlink()


def test_unchanged_data_few_rows_and_cool_down_are_refused(project):
    root, _params, new, base = project
    same = base / "new.csv"
    head = git(root, "rev-parse", "HEAD").strip()
    for attempt in range(2):  # every time
        result = retrain(root, "--in", str(same))
        assert result.returncode == 1 and result.stderr.startswith("ERROR retrain: unchanged data"), attempt
    few = new.head(20).assign(customer_id=[f"F{i}" for i in range(20)])
    few.to_csv(base / "few.csv", index=False)
    result = retrain(root, "--in", str(base / "few.csv"))
    assert result.stderr.startswith("ERROR retrain: 20 new labelled rows, fewer than retrain.min_new_rows")
    more = new.assign(customer_id=[f"M{i}" for i in range(NEW_ROWS)])
    more.to_csv(base / "more.csv", index=False)
    result = retrain(root, "--in", str(base / "more.csv"), "--trigger", "schedule")
    assert result.returncode == 1 and result.stderr.startswith("ERROR retrain: cool-down"), result.stderr
    assert len(batches(root)) == 1 and git(root, "rev-parse", "HEAD").strip() == head


def test_a_clone_restores_each_data_version(project):
    root, params, _new, base = project
    [batch] = batches(root)
    clone = base / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], base, check=True)
    run(["dvc", "cache", "dir", "--local", str(root / ".dvc" / "cache")], clone, check=True)
    git(clone, "checkout", "-q", "HEAD~1")
    run(["dvc", "checkout", "--quiet"], clone, check=True)
    assert batches(clone) == []
    assert json.loads(run(["dvc", "status", "--json"], clone, check=True).stdout) == {}
    git(clone, "checkout", "-q", "-")
    run(["dvc", "checkout", "--quiet"], clone, check=True)
    assert batches(clone) == [batch]
    assert json.loads(run(["dvc", "status", "--json"], clone, check=True).stdout) == {}
    for path in (params["paths"]["train"], params["paths"]["fresh_holdout"], "models/linear"):
        assert (clone / path).exists()
    pd.testing.assert_frame_equal(
        pd.read_parquet(clone / params["paths"]["fresh_holdout"]),
        pd.read_parquet(root / params["paths"]["fresh_holdout"]),
    )
