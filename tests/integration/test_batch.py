"""`make batch-predict`: a packaged champion scores a file, refusing rows as the service would."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.champion import default_store_env, make_frame, package_project, project, train_candidate  # noqa: F401 - fixture
from helpers.support import PROJECT as REPO

from pipelines.release import promotion
from pipelines.serving import answers, bundle


@pytest.mark.integration
def test_batch_predict_scores_good_rows_and_rejects_bad_ones(project, tmp_path):
    root, params = project
    train_candidate(params, hide=[])
    assert promotion.run_promotion(root, params)["promoted"]
    record = package_project(root, params, REPO)
    frame = make_frame(300, 7)
    frame.loc[[5, 17], "x1"] = np.nan  # x1 is not nullable in the inferred contract
    frame.loc[40, "color"] = "purple"
    source, target = tmp_path / "in.csv", tmp_path / "out.parquet"
    frame.to_csv(source, index=False)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "batch", str(source), str(target), "--chunk-rows", "64"],
        cwd=root,
        capture_output=True,
        text=True,
        env=default_store_env(root),  # the user whose BentoML store `package_project` filled
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("SCORED 297 rows") and "3 refused" in done.stdout
    scored = pd.read_parquet(target)
    rejects = pd.read_parquet(tmp_path / "out.rejects.parquet")
    assert sorted(rejects["id"]) == [5, 17, 40]
    assert set(rejects["reason"]) == {
        "x1: missing, and the contract says not nullable",
        "color: not an allowed value",
    }
    model_dir = Path(record["bentoml_home"]) / "models" / bundle.MODEL_NAME / record["model"].split(":")[1]
    loaded = bundle.load(model_dir)
    expected, probabilities = answers.answer_frame(loaded, scored)
    assert scored["prediction"].tolist() == expected
    np.testing.assert_allclose(scored["probability_yes"], probabilities["probability_yes"], atol=1e-6)
    assert json.loads(
        scored.drop(columns=["prediction", "probability_no", "probability_yes"])
        .head(1)
        .to_json(orient="records")
    )


def test_batch_predict_bad_input_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "batch", str(tmp_path / "nope.csv"), str(tmp_path / "o.csv")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"ERROR batch: '{tmp_path / 'nope.csv'}' does not exist"]
