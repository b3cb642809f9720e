"""Every stage notebook runs under papermill (through pipelines.core.nbrun) on a tiny project.

No DVC here: the notebooks run in dvc.yaml's order in a folder with a ~200-row CSV and a
params.yaml pointing at it, so a notebook that breaks shows up in under a minute.
"""

from __future__ import annotations

import json
import re
import shutil
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


def test_every_notebook_is_a_stage() -> None:
    used = {args[0] for _, args in stage_commands()}
    present = {f"notebooks/{p.name}" for p in (PROJECT / "notebooks").glob("*.ipynb")}
    assert present == used


@pytest.mark.timeout(600)
def test_every_notebook_runs_on_tiny_data(tmp_path: Path) -> None:
    root = tmp_path / "tiny"
    shutil.copytree(PROJECT / "notebooks", root / "notebooks")
    (root / "data" / "source").mkdir(parents=True)
    frame = classification_frame(200)
    frame.to_csv(root / "data" / "source" / "tiny.csv", index=False)
    write_yaml(tiny_params(root), root / "params.yaml")

    for stage, args in stage_commands():
        result = run(["python", "-m", "pipelines.core.nbrun", *args], root, timeout=400)
        assert result.returncode == 0, f"{stage} failed:\n{result.stderr[-3000:]}"
        assert TRACEBACK not in result.stdout + result.stderr
        executed = json.loads((root / args[1]).read_text())
        errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
        assert errors == [], stage
        if "--html" in args:
            assert (root / args[1]).with_suffix(".html").stat().st_size > 1000

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
