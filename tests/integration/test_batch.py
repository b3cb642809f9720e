"""Batch scoring: the service's record rules, vectorised, and the `make batch-predict` command."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.champion import make_frame, package_project, project, train_candidate  # noqa: F401 - fixture
from pydantic import ValidationError

from pipelines.release import promotion
from pipelines.serving import bundle

from helpers.support import PROJECT as REPO
FIELDS = {
    "n": {"type": "number", "nullable": True, "minimum": 0.0, "maximum": 10.0},
    "k": {"type": "integer", "nullable": False, "minimum": 0, "maximum": 5},
    "c": {"type": "string", "nullable": False, "allowed": ["a", "b"]},
    "s": {"type": "string", "nullable": True},
}


def hostile_frame():
    return pd.DataFrame(
        {
            "n": [1.0, np.nan, 11.0, -1.0, np.inf, 2.0, 3.0, 4.0, 5.0, 6.0],
            "k": [1, 2, 3, 6, 1, 1.5, 2, np.nan, 3, 4],
            "c": ["a", "b", "a", "a", "b", "a", "z", "a", None, "b"],
            "s": ["x", None, "y", "z", "w", "v", "u", "t", "s", "r" * 99],
        }
    )


def test_vectorised_rules_refuse_exactly_what_the_request_schema_refuses():
    frame = hostile_frame()
    problems = bundle.row_problems(frame, FIELDS, max_string_length=64)
    record = bundle.record_model(FIELDS, {}, max_string_length=64)
    for i, row in enumerate(frame.to_dict("records")):
        row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        if isinstance(row["k"], float) and row["k"] is not None and row["k"].is_integer():
            row["k"] = int(row["k"])
        try:
            record(**row)
            accepted = True
        except ValidationError:
            accepted = False
        assert accepted == (problems.iloc[i] is None), (i, row, problems.iloc[i])
    assert problems.notna().sum() == 8  # rows 2..9 each break one rule
    assert problems.iloc[3] == "n: below the minimum 0.0"  # the first broken rule, in field order


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
    expected, probabilities = bundle.answer_frame(loaded, scored)
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
    assert done.stderr.strip().splitlines() == [
        f"ERROR batch-predict: '{tmp_path / 'nope.csv'}' does not exist"
    ]
