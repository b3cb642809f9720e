"""Every stage notebook runs under papermill (through pipelines.core.nbrun) on a tiny project.

No DVC here: the notebooks run in dvc.yaml's order in a folder with a ~200-row CSV and a
params.yaml pointing at it, so a notebook that breaks shows up in under a minute.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.support import PROJECT, TRACEBACK, classification_frame, read_yaml, run, write_yaml

CANDIDATES = {
    "logreg": {"model": "logistic_regression", "params": {"C": 1.0, "max_iter": 500}},
    "hgb": {"model": "hist_gradient_boosting", "params": {"max_iter": 15, "max_leaf_nodes": 7}},
}


def tiny_params(root: Path) -> dict:
    params = read_yaml(PROJECT / "params.yaml")
    params["data"] = {
        "source": "data/source/tiny.csv",
        "target": "label",
        "task": "classification",
        "ignore": ["account"],
        "positive_class": None,
    }
    params["run"]["cell_timeout"] = 300
    params["train"] = {"cv_folds": 2, "candidates": CANDIDATES}
    params["evaluate"] = {"importance_repeats": 1, "importance_max_rows": 100}
    params["tracking"] = {"experiment": "notebook-smoke", "store": "mlruns"}
    return params


def stage_commands() -> list[tuple[str, list[str]]]:
    """(stage, nbrun arguments) per stage in dvc.yaml's order; train once per candidate."""
    definition = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    commands = []
    for name, stage in definition["stages"].items():
        cmd = stage.get("do", stage)["cmd"]
        notebook = re.search(r"notebooks/[\w.-]+\.ipynb", cmd).group(0)
        html = ["--html"] if "--html" in cmd.split() else []
        base = ["-f", "params.yaml", "-k", "python3", "--execution-timeout", "300"]
        if "foreach" in stage:
            for key in CANDIDATES:
                out = f"reports/{Path(notebook).stem}-{key}.ipynb"
                commands.append((f"{name}@{key}", [notebook, out, *html, *base, "-p", "candidate", key]))
        else:
            commands.append((name, [notebook, f"reports/{Path(notebook).stem}.ipynb", *html, *base]))
    return commands


# Notebooks that are operations rather than stages: `make monitor` runs monitor.ipynb over the
# service's log (tests/service/test_monitor.py runs it against a real server).
OPERATIONS = {"notebooks/monitor.ipynb"}


def test_every_notebook_is_a_stage_or_an_operation() -> None:
    used = {args[0] for _, args in stage_commands()}
    present = {f"notebooks/{p.name}" for p in (PROJECT / "notebooks").glob("*.ipynb")}
    assert present == used | OPERATIONS
    assert not used & OPERATIONS


STAGE_TIMEOUT = 400  # seconds for one notebook on the tiny data


def nbrun(args: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    return run(["python", "-m", "pipelines.core.nbrun", *args], root, timeout=STAGE_TIMEOUT)


def check_stage(stage: str, args: list[str], root: Path, result: subprocess.CompletedProcess[str]) -> None:
    """The stage exited 0 without a traceback, no cell failed, and its HTML report exists."""
    assert result.returncode == 0, f"{stage} failed:\n{result.stderr[-3000:]}"
    assert TRACEBACK not in result.stdout + result.stderr
    executed = json.loads((root / args[1]).read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert errors == [], stage
    if "--html" in args:
        assert (root / args[1]).with_suffix(".html").stat().st_size > 1000


def tiny_project(factory: pytest.TempPathFactory) -> Path:
    """A tiny project with every stage notebook run once, in dvc.yaml's order: built once per
    session and shared with tests/repo/test_reports.py. Tests that change it work on a copy."""
    root = factory.getbasetemp() / "tiny-project"
    done = root / ".stages-ran"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(PROJECT / "notebooks", root / "notebooks")
    (root / "data" / "source").mkdir(parents=True)
    classification_frame(200).to_csv(root / "data" / "source" / "tiny.csv", index=False)
    write_yaml(tiny_params(root), root / "params.yaml")
    for stage, args in stage_commands():
        check_stage(stage, args, root, nbrun(args, root))
    done.touch()
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_project(tmp_path_factory)


@pytest.mark.timeout(600)
def test_every_notebook_runs_on_tiny_data(tiny: Path) -> None:
    root = tiny
    frame = classification_frame(200)
    raw = pd.read_parquet(root / "data" / "raw" / "snapshot.parquet")
    assert raw.shape == frame.shape
    report = json.loads((root / "reports" / "validation.json").read_text())
    assert report["passed"] and report["contract_inferred_now"] and report["rows"] == 200
    assert (root / "data" / "contract.yaml").is_file()
    train = pd.read_parquet(root / "data" / "processed" / "train.parquet")
    holdout = pd.read_parquet(root / "data" / "processed" / "holdout.parquet")
    assert len(train) + len(holdout) == 200
    for key in CANDIDATES:
        scores = json.loads((root / "metrics" / "holdout" / f"{key}.json").read_text())
        assert {"roc_auc", "accuracy", "f1", "log_loss"} <= set(scores)
        assert 0.5 < scores["roc_auc"] <= 1.0, (key, scores)  # the tiny label is learnable
        cv = json.loads((root / "metrics" / "cv" / f"{key}.json").read_text())
        assert len(cv["roc_auc"]["folds"]) == 2
        run_info = json.loads((root / "models" / key / "run.json").read_text())
        assert run_info["positive_class"] == "leave"  # the minority label
        assert (root / "models" / key / "model.joblib").is_file()
        assert (root / "plots" / "roc" / f"{key}.csv").stat().st_size > 0
    assert (root / "mlruns" / "mlflow.db").is_file()  # the store lives in the project


@pytest.mark.timeout(600)
def test_compare_runs_in_a_clone_whose_mlflow_store_lacks_the_runs(tiny: Path, tmp_path: Path) -> None:
    """A colleague's clone after `dvc pull`: DVC's outputs are there, the MLflow store is not."""
    clone = tmp_path / "clone"
    shutil.copytree(tiny, clone, ignore=shutil.ignore_patterns("mlruns"))
    for old in (clone / "reports").glob("compare.*"):
        old.unlink()
    args = next(a for stage, a in stage_commands() if stage == "compare")

    check_stage("compare", args, clone, nbrun(args, clone))

    executed = json.loads((clone / args[1]).read_text())
    shown = json.dumps([o for c in executed["cells"] for o in c.get("outputs", [])])
    store = f"sqlite:///{(clone / 'mlruns' / 'mlflow.db').resolve()}"
    for key in CANDIDATES:
        run_id = json.loads((clone / "models" / key / "run.json").read_text())["run_id"]
        note = f"run {run_id} is not in this MLflow store ({store}): it was logged in another store"
        assert note in shown, key
    assert "use a shared tracking server" in (clone / args[1]).with_suffix(".html").read_text()
    registered = read_yaml(clone / "params.yaml")["promote"]["registered_model"]
    assert f"no champion of '{registered}' in this MLflow store ({store})" in shown
