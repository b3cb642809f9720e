"""pipelines/monitoring/drift.py: the drift rule.

Oracles: PSI and Holm by hand; KS, Wasserstein and chi-squared from scipy called here on the
raw values; Jensen-Shannon from its formula. The rule at the issue's window sizes on seeded
synthetic data (20 columns: 10 normal, 10 categorical), with fewer replays than bench/monitor.py.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipelines.monitoring.drift import DRIFT, INSUFFICIENT, OK, drift_report, drifted, holm, psi
from pipelines.monitoring.reference import PREDICTION, build_reference

RULE = {"alpha": 0.05, "numeric_effect": 0.1, "categorical_effect": 0.05, "min_rows": 300}
SHARES = [0.6, 0.3, 0.1]
LEVELS = ["a", "b", "c"]


def test_psi_by_hand() -> None:
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5)
    assert psi(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(
        0.25 * math.log(2) + 0.25 * math.log(1.5)
    )


def test_psi_floors_an_empty_bin_at_epsilon() -> None:
    expected = (0.4 - 0.5) * math.log(0.8) + (0.1 - 1e-4) * math.log(0.1 / 1e-4)
    assert psi(np.array([0.5, 0.5, 0.0]), np.array([0.5, 0.4, 0.1])) == pytest.approx(expected)


def test_unchanged_shares_have_zero_psi() -> None:
    assert psi(np.array([0.2, 0.8]), np.array([0.2, 0.8])) == 0.0


def test_holm_by_hand() -> None:
    # sorted: a 0.01 x 3 = 0.03; c 0.03 x 2 = 0.06; b 0.04 x 1 = 0.04, raised to 0.06 (monotone)
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


def small_reference(train: pd.DataFrame, prediction: pd.Series) -> dict:
    fields = {"x": {"type": "number", "nullable": False}, "colour": {"type": "string", "nullable": False}}
    # sample_size above the row count: the reference keeps every value, so scipy can see the same data
    return build_reference(
        train, prediction, "numeric", fields=fields, model_version="7", sample_size=10_000, bins=10, seed=1
    )


def test_ks_wasserstein_and_chi2_match_scipy() -> None:
    rng = np.random.default_rng(3)
    train = pd.DataFrame({"x": rng.normal(size=800), "colour": rng.choice(LEVELS, size=800, p=SHARES)})
    score = pd.Series(rng.uniform(size=800))
    window = pd.DataFrame({"x": rng.normal(0.3, 1.2, size=500), "colour": rng.choice(LEVELS, size=500)})
    window[PREDICTION] = rng.uniform(size=500)
    report = drift_report(window, small_reference(train, score), **RULE)
    x = report["features"]["x"]
    assert x["p_value"] == pytest.approx(stats.ks_2samp(window["x"], train["x"], method="asymp").pvalue)
    assert x["effect"] == pytest.approx(
        stats.wasserstein_distance(window["x"], train["x"]) / train["x"].std()
    )
    table = [train["colour"].value_counts().reindex(LEVELS), window["colour"].value_counts().reindex(LEVELS)]
    colour = report["features"]["colour"]
    assert colour["p_value"] == pytest.approx(stats.chi2_contingency(table, correction=False).pvalue)
    p = train["colour"].value_counts(normalize=True).reindex(LEVELS).to_numpy()
    q = window["colour"].value_counts(normalize=True).reindex(LEVELS).to_numpy()
    m = (p + q) / 2
    js = math.sqrt((np.sum(p * np.log2(p / m)) + np.sum(q * np.log2(q / m))) / 2)
    assert colour["effect"] == pytest.approx(js)
    assert report["prediction"]["p_value"] == pytest.approx(
        stats.ks_2samp(window[PREDICTION], score, method="asymp").pvalue
    )
    # Holm over the three columns tested: the smallest p-value is multiplied by 3
    smallest = min(r["p_value"] for r in (x, colour, report["prediction"]))
    assert min(r["adjusted_p"] for r in (x, colour, report["prediction"])) == pytest.approx(3 * smallest)


def test_an_unseen_category_counts_against_a_zero_reference_share() -> None:
    rng = np.random.default_rng(4)
    train = pd.DataFrame({"x": rng.normal(size=800), "colour": rng.choice(LEVELS, size=800, p=SHARES)})
    window = pd.DataFrame({"x": rng.normal(size=400), "colour": ["a"] * 200 + ["new"] * 200})
    window[PREDICTION] = rng.uniform(size=400)
    colour = drift_report(window, small_reference(train, pd.Series(rng.uniform(size=800))), **RULE)[
        "features"
    ]["colour"]
    assert colour["status"] == DRIFT
    assert colour["psi"] > 1


def test_below_min_rows_the_verdict_is_insufficient_data_even_for_a_huge_shift() -> None:
    rng = np.random.default_rng(5)
    train = pd.DataFrame({"x": rng.normal(size=800), "colour": rng.choice(LEVELS, size=800, p=SHARES)})
    window = pd.DataFrame({"x": rng.normal(10, 1, size=299), "colour": ["c"] * 299})
    window[PREDICTION] = rng.uniform(size=299)
    report = drift_report(window, small_reference(train, pd.Series(rng.uniform(size=800))), **RULE)
    assert report["status"] == INSUFFICIENT
    for result in [*report["features"].values(), report["prediction"]]:
        assert result["status"] == INSUFFICIENT
        assert result["adjusted_p"] is None


def test_nulls_do_not_count_towards_min_rows() -> None:
    rng = np.random.default_rng(6)
    train = pd.DataFrame({"x": rng.normal(size=800), "colour": rng.choice(LEVELS, size=800, p=SHARES)})
    window = pd.DataFrame(
        {"x": [np.nan] * 200 + list(rng.normal(size=200)), "colour": rng.choice(LEVELS, size=400)}
    )
    window[PREDICTION] = rng.uniform(size=400)
    report = drift_report(window, small_reference(train, pd.Series(rng.uniform(size=800))), **RULE)
    assert (report["features"]["x"]["status"], report["features"]["x"]["n"]) == (INSUFFICIENT, 200)
    assert report["features"]["colour"]["status"] in (OK, DRIFT)


def test_a_column_missing_from_the_window_is_insufficient_data() -> None:
    rng = np.random.default_rng(8)
    train = pd.DataFrame({"x": rng.normal(size=800), "colour": rng.choice(LEVELS, size=800, p=SHARES)})
    window = pd.DataFrame({"x": rng.normal(size=400), PREDICTION: rng.uniform(size=400)})
    report = drift_report(window, small_reference(train, pd.Series(rng.uniform(size=800))), **RULE)
    assert (report["features"]["colour"]["status"], report["features"]["colour"]["n"]) == (INSUFFICIENT, 0)


# The rule at the sizes: 10 numeric + 10 categorical columns, a reference of 5,000 rows.
NUMERIC = [f"n{i}" for i in range(10)]
CATEGORICAL = [f"c{i}" for i in range(9)]  # with the prediction (3 classes): 20 columns tested


def population(rows: int, rng: np.random.Generator, shift: float = 0.0, points: float = 0.0) -> pd.DataFrame:
    """Seeded synthetic traffic; `shift` moves n0 by that many sds, `points` moves c0's rarest share up."""
    frame = pd.DataFrame({name: rng.normal(size=rows) for name in NUMERIC})
    frame["n0"] += shift
    moved = [SHARES[0] - points * 6 / 9, SHARES[1] - points * 3 / 9, SHARES[2] + points]
    frame["c0"] = rng.choice(LEVELS, size=rows, p=moved)
    for name in CATEGORICAL[1:]:
        frame[name] = rng.choice(LEVELS, size=rows, p=SHARES)
    return frame


@pytest.fixture(scope="module")
def reference() -> dict:
    rng = np.random.default_rng(11)
    train = population(5000, rng)
    fields = {n: {"type": "number", "nullable": False} for n in NUMERIC}
    fields |= {n: {"type": "string", "nullable": False} for n in CATEGORICAL}
    predicted = pd.Series(rng.choice(["x", "y", "z"], size=5000, p=[0.5, 0.3, 0.2]))
    return build_reference(
        train, predicted, "categorical", fields=fields, model_version="1", sample_size=5000, bins=10, seed=2
    )


def flagged(reference: dict, rows: int, replays: int, seed: int, **moves: float) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(replays):
        window = population(rows, rng, **moves)
        window[PREDICTION] = rng.choice(["x", "y", "z"], size=rows, p=[0.5, 0.3, 0.2])
        out.append(drifted(drift_report(window, reference, **RULE)))
    return out


@pytest.mark.parametrize(("rows", "replays"), [(300, 20), (1000, 20), (10_000, 4), (100_000, 1)])
def test_unchanged_windows_raise_nothing(reference: dict, rows: int, replays: int) -> None:
    runs = flagged(reference, rows, replays, seed=rows)
    assert sum(bool(names) for names in runs) <= replays // 20  # >= 95 % clean


def test_half_an_sd_is_caught_within_300_rows(reference: dict) -> None:
    runs = flagged(reference, 300, 20, seed=21, shift=0.5)
    assert sum("n0" in names for names in runs) >= 19


def test_a_quarter_sd_is_caught_within_1000_rows(reference: dict) -> None:
    runs = flagged(reference, 1000, 20, seed=22, shift=0.25)
    assert sum("n0" in names for names in runs) >= 19


def test_ten_points_onto_a_rare_category_are_caught_within_300_rows(reference: dict) -> None:
    # 10 % -> 20 %: the chi-squared test's power at Holm's 0.05 / 20 is about 0.99 (noncentral
    # chi-squared, 2 df, lambda ~ 31), and sampling at 300 rows can pull JS under 0.05 now and then.
    runs = flagged(reference, 300, 20, seed=23, points=0.10)
    assert sum("c0" in names for names in runs) >= 18


def test_a_harmless_shift_at_100k_rows_is_not_flagged(reference: dict) -> None:
    runs = flagged(reference, 100_000, 1, seed=24, shift=0.02)
    assert runs == [[]]


def test_the_effect_gate_holds_back_a_significant_but_small_shift(reference: dict) -> None:
    rng = np.random.default_rng(25)
    window = population(100_000, rng, shift=0.08)
    window[PREDICTION] = rng.choice(["x", "y", "z"], size=100_000, p=[0.5, 0.3, 0.2])
    n0 = drift_report(window, reference, **RULE)["features"]["n0"]
    assert n0["adjusted_p"] < RULE["alpha"]  # the test alone would call it drift
    assert (n0["status"], n0["effect"] < RULE["numeric_effect"]) == (OK, True)
