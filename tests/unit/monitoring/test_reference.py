"""pipelines/monitoring/reference.py: what the reference keeps, that it is deterministic and
survives JSON, and how the prediction is seen. Oracles are hand-counted from crafted frames."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.monitoring.drift import drift_report
from pipelines.monitoring.reference import PREDICTION, build_reference, check_reference, prediction_series

FIELDS = {
    "age": {"type": "integer", "nullable": False, "minimum": 0, "maximum": 120},
    "income": {"type": "number", "nullable": True},
    "plan": {"type": "string", "nullable": False, "allowed": ["basic", "plus", "pro"]},
    "flag": {"type": "boolean", "nullable": False},
}


def frame(rows: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10, 1, size=rows)
    income[::10] = np.nan  # one row in ten
    features = pd.DataFrame(
        {
            "age": rng.integers(18, 90, size=rows),
            "income": income,
            "plan": rng.choice(["basic", "plus"], size=rows),
            "flag": rng.choice([True, False], size=rows),
        }
    )
    return features, pd.Series(rng.uniform(size=rows))


def build(features: pd.DataFrame, score: pd.Series, seed: int = 42, sample_size: int = 100) -> dict:
    return build_reference(
        features,
        score,
        "numeric",
        fields=FIELDS,
        model_version="3",
        sample_size=sample_size,
        bins=4,
        seed=seed,
    )


def test_same_inputs_give_the_same_json_and_another_seed_another_sample() -> None:
    features, score = frame(1000, 1)
    first = json.dumps(build(features, score), sort_keys=True)
    assert json.dumps(build(features.copy(), score.copy()), sort_keys=True) == first
    other = build(features, score, seed=43)
    assert other["columns"]["age"]["sample"] != json.loads(first)["columns"]["age"]["sample"]


def test_json_round_trip_keeps_the_reference_and_its_verdicts() -> None:
    features, score = frame(1000, 2)
    reference = build(features, score, sample_size=5000)
    back = check_reference(json.loads(json.dumps(reference)))
    assert back == reference
    window, window_score = frame(400, 3)
    window[PREDICTION] = window_score
    rule = {"alpha": 0.05, "numeric_effect": 0.1, "categorical_effect": 0.05, "min_rows": 300}
    assert drift_report(window, back, **rule) == drift_report(window, reference, **rule)


def test_what_a_column_keeps() -> None:
    features = pd.DataFrame(
        {
            "age": [20, 30, 40, 50, 60, 70, 80, 90],
            "income": [1.0, 2.0, np.nan, 4.0, np.nan, 6.0, 7.0, 8.0],
            "plan": ["basic", "basic", "basic", "plus", "plus", "basic", "plus", "basic"],
            "flag": [True, True, False, True, True, True, True, True],
        }
    )
    reference = build(features, pd.Series(np.linspace(0, 1, 8)), sample_size=5)
    assert reference["model_version"] == "3" and reference["rows"] == 8 and reference["seed"] == 42
    age = reference["columns"]["age"]
    assert age["kind"] == "numeric" and (age["min"], age["max"]) == (20.0, 90.0)
    assert len(age["sample"]) == 5 and set(age["sample"]) <= set(features["age"].astype(float))
    assert age["sd"] == pytest.approx(np.std([20, 30, 40, 50, 60, 70, 80, 90], ddof=1))
    assert len(age["edges"]) == 3 and sum(age["bin_shares"]) == pytest.approx(1.0)
    assert age["bin_shares"] == pytest.approx([0.25, 0.25, 0.25, 0.25])  # 8 distinct values, 4 bins
    income = reference["columns"]["income"]
    assert (income["null_rate"], income["n"], income["nullable"]) == (0.25, 6, True)
    plan = reference["columns"]["plan"]
    assert plan["kind"] == "categorical"
    assert plan["frequencies"] == {"basic": 5 / 8, "plus": 3 / 8}
    assert plan["allowed"] == ["basic", "plus", "pro"] and plan["nullable"] is False
    flag = reference["columns"]["flag"]
    assert flag["kind"] == "categorical" and flag["frequencies"] == {"False": 1 / 8, "True": 7 / 8}
    assert reference[PREDICTION]["kind"] == "numeric" and reference[PREDICTION]["max"] == 1.0


def test_a_large_training_set_gives_a_small_reference() -> None:
    rng = np.random.default_rng(4)
    rows = 100_000
    features = pd.DataFrame({f"x{i}": rng.normal(size=rows) for i in range(10)})
    features = features.assign(**{f"c{i}": rng.choice(list("abcdefgh"), size=rows) for i in range(10)})
    reference = build_reference(
        features,
        pd.Series(rng.uniform(size=rows)),
        "numeric",
        fields={},
        model_version="1",
        sample_size=5000,
        bins=10,
        seed=1,
    )
    size = len(json.dumps(reference))
    assert 100_000 < size < 2_000_000  # KB to low MB: 11 samples of 5,000 values dominate
    assert (
        reference["columns"]["c0"]["kind"] == "categorical"
        and reference["columns"]["x0"]["kind"] == "numeric"
    )


def test_the_prediction_as_drift_sees_it() -> None:
    probabilities = pd.DataFrame({"No": [0.9, 0.2], "Yes": [0.1, 0.8]})
    score, kind = prediction_series("classification", pd.Series(["No", "Yes"]), probabilities, "Yes")
    assert kind == "numeric" and score.tolist() == [0.1, 0.8] and score.name == PREDICTION
    three = pd.DataFrame({"a": [0.5, 0.1], "b": [0.3, 0.1], "c": [0.2, 0.8]})
    classes, kind = prediction_series("classification", pd.Series(["a", "c"]), three)
    assert kind == "categorical" and classes.tolist() == ["a", "c"]
    values, kind = prediction_series("regression", pd.Series([1.5, 2.5]), None)
    assert kind == "numeric" and values.tolist() == [1.5, 2.5]


@pytest.mark.parametrize(
    "broken",
    [
        {},
        {"schema_version": 99},
        {"schema_version": 1, "model_version": "1", "rows": 5, "prediction": {}},
        [],
    ],
)
def test_a_reference_we_did_not_write_is_refused(broken: object) -> None:
    with pytest.raises(ValueError, match="reference"):
        check_reference(broken)  # type: ignore[arg-type]


def test_an_empty_or_mismatched_training_set_is_refused() -> None:
    features, score = frame(10, 5)
    with pytest.raises(ValueError, match="empty"):
        build(features.iloc[:0], score.iloc[:0])
    with pytest.raises(ValueError, match="length"):
        build(features, score.iloc[:5])


def test_bins_of_a_column_with_few_values_do_not_move_when_a_value_moves_by_rounding():
    """Scores of a model that predicts from one category take three values; the log carries them
    rounded, or computed in float32, about 1e-7 away. Each value must stay in its bin."""
    from pipelines.monitoring.reference import bin_shares, numeric_stats

    rng = np.random.default_rng(0)
    atoms = np.array([0.2977908266, 0.5977908266, 0.8012345678])
    values = rng.choice(atoms, size=3000, p=[0.3, 0.4, 0.3])
    stats = numeric_stats(pd.Series(values), sample_size=500, bins=10, seed=0)
    assert not set(stats["edges"]) & set(atoms)
    for nudge in (-1e-7, 1e-7):
        assert bin_shares(values + nudge, stats["edges"]).tolist() == stats["bin_shares"]
    # Continuous values are binned as before: the edges are quantiles of the data.
    smooth = rng.normal(size=3000)
    edges = numeric_stats(pd.Series(smooth), sample_size=500, bins=10, seed=0)["edges"]
    assert np.allclose(edges, np.quantile(smooth, np.linspace(0, 1, 11)[1:-1]), atol=1e-3)
