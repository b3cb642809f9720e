"""The same pipeline on a regression data set: only params.yaml changes, no code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from project_copy import REPRO_TIMEOUT, mlflow_store
from support import TRACEBACK, copy_project, error_lines, read_yaml, regression_frame, run, write_yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

COMPARE_BUG = (
    "BUG (compare stage): notebooks/compare.ipynb picks the best candidate by promote.primary_metric, "
    "which params.yaml fixes to roc_auc; a regression task (data.task + candidates changed, as "
    "params.yaml says suffices) has no roc_auc, so `dvc repro` fails at compare"
)

CANDIDATES = {
    "ridge": {"model": "ridge", "params": {"alpha": 1.0}},
    "forest": {"model": "random_forest", "params": {"n_estimators": 40, "max_depth": 8}},
    "hgb": {"model": "hist_gradient_boosting", "params": {"max_iter": 80, "learning_rate": 0.1}},
}


def test_regression_data_set_through_params_only(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "project")
    frame = regression_frame(400)
    frame.to_csv(root / "data" / "source" / "listings.csv", index=False)
    committed_contract = (root / "data" / "contract.yaml").read_bytes()

    params = read_yaml(root / "params.yaml")
    params["data"] = {
        "source": "data/source/listings.csv",
        "target": "price",
        "task": "regression",
        "ignore": ["listing"],
        "positive_class": None,
    }
    params["paths"]["contract"] = "data/contract_listings.yaml"  # absent, so it gets inferred
    params["train"]["candidates"] = CANDIDATES
    write_yaml(params, root / "params.yaml")

    result = run(["dvc", "repro"], root, timeout=REPRO_TIMEOUT)
    assert TRACEBACK not in result.stdout + result.stderr
    known_bug = None
    if result.returncode != 0:
        lines = error_lines(result.stderr)
        # Everything up to the candidates must work; see COMPARE_BUG for the stage after them.
        if lines and lines[0].startswith("ERROR compare:") and "primary_metric 'roc_auc'" in lines[0]:
            known_bug = f"{COMPARE_BUG} ({lines[0]})"
        else:
            pytest.fail(f"dvc repro failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

    contract = yaml.safe_load((root / "data" / "contract_listings.yaml").read_text())
    assert set(contract["columns"]) == set(frame.columns)
    assert contract["columns"]["age_years"]["nullable"] is True
    assert (root / "data" / "contract.yaml").read_bytes() == committed_contract
    report = json.loads((root / "reports" / "validation.json").read_text())
    assert report["contract_inferred_now"] and report["rows"] == 400

    for key in CANDIDATES:
        scores = json.loads((root / "metrics" / "holdout" / f"{key}.json").read_text())
        assert set(scores) == {"r2", "rmse", "mae"}, (key, scores)
        assert all(math.isfinite(v) for v in scores.values())
        assert scores["r2"] > 0.7, (key, scores)  # the target is a plain function of the inputs
        assert 0 < scores["mae"] <= scores["rmse"] < frame["price"].std()
        cv = json.loads((root / "metrics" / "cv" / f"{key}.json").read_text())
        assert set(cv) == {"r2", "rmse", "mae"}
        assert len(cv["r2"]["folds"]) == params["train"]["cv_folds"]
        residuals = pd.read_csv(root / "plots" / "residuals" / f"{key}.csv")
        assert len(residuals) == 80 and residuals["residual"].abs().mean() == pytest.approx(
            scores["mae"], rel=1e-3
        )
        assert pd.read_csv(root / "plots" / "roc" / f"{key}.csv").empty  # header only
        assert (root / "plots" / "images" / key / "residuals.png").is_file()

    with mlflow_store(root) as client:
        for key in CANDIDATES:
            info = json.loads((root / "models" / key / "run.json").read_text())
            tags = client.get_run(info["run_id"]).data.tags
            assert tags["task"] == "regression" and tags["candidate"] == key
            assert info["positive_class"] is None
    if known_bug:
        pytest.xfail(known_bug)
    assert run(["dvc", "status", "--json"], root, timeout=300, check=True).stdout.strip() in ("{}", "")
