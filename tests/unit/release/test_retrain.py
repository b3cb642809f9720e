"""make retrain's pure rules: the fresh holdout, refusals, the gate's second window, and the rows
a prediction log gives (real log and label files in the service's format)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipelines.core.errors import ParamsError, PipelineError
from pipelines.data import labelled
from pipelines.release import gate, retrain, retrain_rows

RULES = {"fresh_share": 0.3, "fresh_min_delta": 0.0, "min_new_rows": 3, "cooldown_hours": 24, "commit": True}
NOW = datetime(2025, 1, 2, 12, tzinfo=UTC)


def frame(n: int, start: int = 0) -> pd.DataFrame:
    ids = np.arange(start, start + n)
    return pd.DataFrame(
        {"id": [f"C{i}" for i in ids], "x": ids * 1.5, "label": np.where(ids % 2, "yes", "no")}
    )


def test_fresh_split_takes_the_freshest_share_rounded_up():
    rows = frame(10)
    older, fresh = labelled.fresh_split(rows, 0.25)
    assert fresh["id"].tolist() == ["C7", "C8", "C9"]  # ceil(2.5) = 3, the last rows
    assert older["id"].tolist() == [f"C{i}" for i in range(7)]
    assert [len(p) for p in labelled.fresh_split(rows.iloc[:0], 0.25)] == [0, 0]
    with pytest.raises(ParamsError):
        labelled.fresh_split(rows, 1.0)


def test_digest_ignores_row_order_and_sees_any_value():
    rows = frame(5)
    assert labelled.digest(rows) == labelled.digest(rows.iloc[::-1])
    changed = rows.copy()
    changed.loc[2, "x"] += 0.001
    assert labelled.digest(changed) != labelled.digest(rows)


def test_unchanged_data_is_refused_every_time():
    known = frame(20)
    assert "unchanged data: all 5 rows" in retrain.unchanged(frame(5, 10), known, None)
    last = {"input_digest": labelled.digest(frame(8, 30)), "at": "2025-01-01T00:00:00+00:00"}
    assert "same 8 rows as the last retrain" in retrain.unchanged(frame(8, 30).iloc[::-1], known, last)
    assert retrain.unchanged(frame(8, 18), known, last) is None  # 6 of 8 are new


def test_new_rows_drops_known_and_repeated_rows_and_keeps_order():
    rows = pd.concat([frame(3, 40), frame(2, 0), frame(1, 40)], ignore_index=True)
    new = retrain.new_rows(rows, frame(10))
    assert new["id"].tolist() == ["C40", "C41", "C42"]


def test_too_few_rows_then_cool_down_then_allowed():
    last = {"at": (NOW - timedelta(hours=5)).isoformat()}
    assert "fewer than retrain.min_new_rows (3)" in retrain.premature(frame(2), None, RULES, NOW)
    why = retrain.premature(frame(3), last, RULES, NOW)
    assert why.startswith("cool-down") and "5.0 h ago" in why
    assert retrain.premature(frame(3), last, {**RULES, "cooldown_hours": 4}, NOW) is None
    assert retrain.premature(frame(3), None, RULES, NOW) is None


def test_params_are_checked():
    params = {
        "retrain": RULES,
        "paths": {"labelled_batches": "data/labelled", "labelled": "a", "fresh_holdout": "b"},
    }
    assert retrain.check(params) == RULES
    for key, bad in [("fresh_share", 0), ("min_new_rows", 0), ("cooldown_hours", -1), ("commit", "yes")]:
        with pytest.raises(ParamsError, match=f"retrain.{key}"):
            retrain.check({**params, "retrain": {**RULES, key: bad}})


def test_fresh_window_must_be_won_too():
    rules = {"primary_metric": "roc_auc"}
    win = gate.decide_fresh({"roc_auc": 0.81}, {"roc_auc": 0.80}, rules["primary_metric"], 0.0)
    lose = gate.decide_fresh({"roc_auc": 0.79}, {"roc_auc": 0.80}, rules["primary_metric"], 0.0)
    unknown = gate.decide_fresh({}, {"roc_auc": 0.80}, "roc_auc", 0.0)
    assert win.promote and not lose.promote and not unknown.promote
    assert lose.reasons[0].startswith("fresh holdout roc_auc 0.7900 vs champion 0.8000: -0.0100")
    fixed_ok = gate.Decision(True, ["fixed ok"])
    fixed_bad = gate.Decision(False, ["fixed bad"])
    assert gate.combine(fixed_ok, None) is fixed_ok
    assert gate.combine(fixed_ok, win) == gate.Decision(True, ["fixed ok", *win.reasons])
    assert gate.combine(fixed_ok, lose) == gate.Decision(False, lose.reasons)
    assert gate.combine(fixed_bad, lose) == gate.Decision(False, ["fixed bad", *lose.reasons])


def write_log(folder, lines):
    (folder / "predictions").mkdir(parents=True, exist_ok=True)
    with open(folder / "predictions" / "predictions.w1.jsonl", "w") as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")


def line(request_id, record, minute, x, role=None, version="1"):
    entry = {
        "request_id": request_id,
        "record": record,
        "timestamp": f"2025-01-01T10:{minute:02d}:00+00:00",
        "model_version": version,
        "latency_ms": 1.0,
        "inputs": {"x": x, "color": "red"},
        "prediction": "yes",
        "probabilities": {"no": 0.4, "yes": 0.6},
    }
    if role:
        entry["role"] = role
    return entry


def test_log_rows_are_answered_labelled_records_oldest_first(tmp_path):
    write_log(
        tmp_path,
        [
            line("b", 0, 5, 2.0, role="champion"),
            line("b", 0, 5, 2.0, role="shadow", version="2"),  # the same record scored off the path
            line("a", 0, 1, 1.0),  # an older line without a role: the champion's
            line("a", 1, 1, 1.5),  # answered, never labelled
            line("c", 0, 9, 3.0, role="challenger", version="2"),
            line("d", 0, 7, 4.0, role="shadow", version="2"),  # only a shadow line: not an answer
        ],
    )
    (tmp_path / "feedback").mkdir()
    labels = [
        ("b", 0, "no"),
        ("a", 0, "yes"),
        ("c", 0, "yes"),
        ("d", 0, "no"),
        ("a", 0, "no"),  # a conflicting later label: the first received wins
    ]
    with open(tmp_path / "feedback" / "labels.api.jsonl", "w") as handle:
        for n, (rid, rec, label) in enumerate(labels):
            at = f"2025-01-01T11:00:0{n}+00:00"
            handle.write(
                json.dumps(
                    {"request_id": rid, "record": rec, "label": label, "received_at": at, "source": "api"}
                )
                + "\n"
            )
    rows = retrain_rows.from_log(tmp_path, "churn", ["customer"])
    expected = pd.DataFrame(
        {
            "x": [1.0, 2.0, 3.0],
            "color": ["red"] * 3,
            "customer": ["a#0", "b#0", "c#0"],
            "churn": ["yes", "no", "yes"],
        }
    )
    pd.testing.assert_frame_equal(rows, expected, check_dtype=False)


def test_a_log_without_labels_is_refused(tmp_path):
    write_log(tmp_path, [line("a", 0, 1, 1.0)])
    with pytest.raises(PipelineError, match="no labels"):
        retrain_rows.from_log(tmp_path, "churn", [])
