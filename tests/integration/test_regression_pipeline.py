"""The same pipeline on a regression data set: only `data` in params.yaml changes, no code and no
candidate (each model family picks its regressor)."""

from __future__ import annotations

import json
import math

import joblib
import pandas as pd
import pytest
import yaml
from helpers.project_copy import REPRO_TIMEOUT, RegressionRun, mlflow_store
from helpers.support import TRACEBACK, run
from sklearn.base import is_regressor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]


def test_regression_data_set_through_params_only(regression_run: RegressionRun) -> None:
    root, frame, params = regression_run.root, regression_run.frame, regression_run.params
    candidates = params["train"]["candidates"]
    # Against the copy as committed: only `data` and the contract's path changed, not the candidates.
    committed = yaml.safe_load(run(["git", "show", "HEAD:params.yaml"], root, check=True).stdout)
    assert {k for k in committed | params if committed.get(k) != params.get(k)} <= {"data", "paths"}
    assert {k for k, v in committed["paths"].items() if params["paths"][k] != v} == {"contract"}

    result = regression_run.job.wait(timeout=REPRO_TIMEOUT)
    assert TRACEBACK not in result.stdout + result.stderr
    assert result.returncode == 0, f"dvc repro failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    contract = yaml.safe_load((root / "data" / "contract_listings.yaml").read_text())
    assert set(contract["columns"]) == set(frame.columns)
    assert contract["columns"]["age_years"]["nullable"] is True
    assert (root / "data" / "contract.yaml").read_bytes() == regression_run.committed_contract
    report = json.loads((root / "reports" / "validation.json").read_text())
    assert report["contract_inferred_now"] and report["rows"] == 400

    for key in candidates:
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
        for key in candidates:
            info = json.loads((root / "models" / key / "run.json").read_text())
            tags = client.get_run(info["run_id"]).data.tags
            assert tags["task"] == "regression" and tags["candidate"] == key
            assert tags["model"] == candidates[key]["model"]
            assert info["positive_class"] is None
            estimator = joblib.load(root / "models" / key / "model.joblib").named_steps["model"]
            assert is_regressor(estimator), (key, estimator)  # the family picked the regressor
    assert run(["dvc", "status", "--json"], root, timeout=300, check=True).stdout.strip() in ("{}", "")
