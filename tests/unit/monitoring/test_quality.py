"""pipelines/monitoring/quality.py: counts and example request ids on a crafted window, and no
value of the window in the report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from pipelines.monitoring.quality import quality_report
from pipelines.monitoring.reference import build_reference

FIELDS = {
    "tenure": {"type": "integer", "nullable": False},
    "charges": {"type": "number", "nullable": True},
    "plan": {"type": "string", "nullable": False, "allowed": ["basic", "plus", "pro"]},
}


def reference() -> dict:
    train = pd.DataFrame(
        {
            "tenure": [0, 12, 24, 36, 48, 60, 72, 6, 18, 30],
            "charges": [20.0, 30.0, np.nan, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 110.0],  # 10 % null
            "plan": ["basic", "plus"] * 5,  # "pro" is allowed but never seen
        }
    )
    return build_reference(
        train, pd.Series(np.linspace(0, 1, 10)), "numeric", fields=FIELDS, model_version="1",
        sample_size=100, bins=4, seed=1,
    )  # fmt: skip


def window() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": ["r1", "r1", "r2", "r3", "r4", "r5", "r6", "r7"],
            "tenure": [5, 73, -1, 99, 10, np.nan, 10, 10],  # 3 outside [0, 72]; 1 null, not nullable
            "charges": [25.0, np.nan, np.nan, np.nan, 40.0, 50.0, 60.0, 19.5],  # 3 / 8 null; 1 below 20
            "plan": ["basic", "pro", "pro", "SECRET-plan", "plus", "basic", None, "plus"],  # 3 unseen
        }
    )


def test_counts_and_example_ids_on_a_crafted_window() -> None:
    report = quality_report(window(), reference(), null_tolerance=0.05, examples=2)
    tenure, charges, plan = (report["columns"][name] for name in ("tenure", "charges", "plan"))
    assert report["rows"] == 8
    assert tenure["out_of_range"] == {
        "count": 3,
        "examples": ["r1", "r2"],
    }  # r1 once, though 73 is its 2nd row
    assert (tenure["nulls"], tenure["null_rate"]["flagged"], tenure["null_examples"]) == (1, True, ["r5"])
    assert charges["out_of_range"] == {"count": 1, "examples": ["r7"]}
    assert charges["nulls"] == 3 and charges["null_rate"]["rate"] == 3 / 8
    assert charges["null_rate"]["flagged"]  # 0.375 > 0.1 + 0.05
    assert charges["null_examples"] == ["r1", "r2"]
    assert plan["unseen_categories"] == {"count": 3, "examples": ["r1", "r2"]}
    assert plan["nulls"] == 1 and plan["null_rate"]["flagged"]
    kinds = {(i["column"], i["kind"]): i["count"] for i in report["issues"]}
    assert kinds == {
        ("tenure", "nulls"): 1,
        ("tenure", "out_of_range"): 3,
        ("charges", "nulls"): 3,
        ("charges", "out_of_range"): 1,
        ("plan", "nulls"): 1,
        ("plan", "unseen_categories"): 3,
    }


def test_a_null_rate_within_tolerance_is_not_an_issue() -> None:
    quiet = window().assign(charges=[25.0, np.nan, 30.0, 40.0, 40.0, 50.0, 60.0, 70.0])  # 1 / 8 <= 0.1 + 0.05
    report = quality_report(quiet, reference(), null_tolerance=0.05, examples=5)
    assert not report["columns"]["charges"]["null_rate"]["flagged"]
    assert report["columns"]["charges"]["null_examples"] == []


def test_the_report_echoes_no_value() -> None:
    text = json.dumps(quality_report(window(), reference(), null_tolerance=0.05, examples=10))
    for value in ("SECRET-plan", "99", "19.5", "73", "-1"):
        assert value not in text


def test_a_missing_column_is_reported_and_a_window_needs_request_ids() -> None:
    report = quality_report(window().drop(columns=["plan"]), reference(), null_tolerance=0.05, examples=2)
    assert report["columns"]["plan"] == {"missing_column": True, "rows": 8}
    assert {"column": "plan", "kind": "missing_column", "count": 8, "examples": []} in report["issues"]
    try:
        quality_report(window().drop(columns=["request_id"]), reference(), null_tolerance=0.05, examples=2)
    except ValueError as error:
        assert "request_id" in str(error)
    else:
        raise AssertionError("a window without request ids was accepted")
