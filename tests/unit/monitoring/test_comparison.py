"""The rollout analysis, on seeded data whose truth is known by construction.

Oracles are independent of the module: Fisher's one-sided p-value is the hypergeometric tail
(scipy.stats.hypergeom, not fisher_exact), quantiles come from np.percentile on differences the
test computes its own way, live metrics from scikit-learn directly, the matrix from hand counts.
Settings are written here, not read from params.yaml, so a change of defaults moves no oracle.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from pipelines.core.errors import ParamsError
from pipelines.monitoring.comparison import (
    agreement,
    decide,
    error_rate_test,
    latency_check,
    live_performance_per_arm,
    numeric_agreement,
    quantiles,
)

SETTINGS = {
    "min_requests": 500,
    "alpha": 0.05,
    "max_p99_ratio": 1.2,
    "min_agreement": 0.9,
    "max_metric_drop": {"roc_auc": 0.02, "log_loss": 0.05},
}


def arm(requests: int, errors: int, p99_ms: float | None = 10.0, **metrics: float | None) -> dict[str, Any]:
    return {"requests": requests, "errors": errors, "p99_ms": p99_ms, "metrics": metrics}


def healthy(**changes: Any) -> dict[str, Any]:
    figures = {
        "champion": arm(5000, 50, 10.0, roc_auc=0.84, log_loss=0.40),
        "challenger": arm(5000, 50, 11.0, roc_auc=0.85, log_loss=0.39),
        "agreement": {"compared": 5000, "agreed": 4750, "rate": 0.95},
    }
    return figures | changes


def fisher_tail(errors_c: int, total_c: int, errors_x: int, total_x: int) -> float:
    """P(challenger errors >= observed | all margins): the one-sided Fisher p-value, by definition."""
    return float(stats.hypergeom.sf(errors_x - 1, total_c + total_x, errors_c + errors_x, total_x))


def is_sentence(text: str) -> bool:
    return bool(re.fullmatch(r"[a-z][^{}\[\]\n]+\.", text, flags=re.IGNORECASE))


# --- the error test ---


def test_a_challenger_with_three_times_the_error_rate_fails_on_5k_requests() -> None:
    rng = np.random.default_rng(12)
    errors_c, errors_x = int(rng.binomial(5000, 0.01)), int(rng.binomial(5000, 0.03))
    test = error_rate_test(errors_c, 5000, errors_x, 5000)
    assert test["worse"] is True
    assert test["p_value"] == pytest.approx(fisher_tail(errors_c, 5000, errors_x, 5000), rel=1e-6)
    assert test["challenger_rate"] == errors_x / 5000 and test["champion_rate"] == errors_c / 5000
    figures = healthy(champion=arm(5000, errors_c), challenger=arm(5000, errors_x))
    decision = decide(figures, SETTINGS)
    assert decision["outcome"] == "fail"
    assert len(decision["reasons"]) == 1 and decision["reasons"][0].startswith("error rate:")


def test_equal_error_rates_pass() -> None:
    test = error_rate_test(50, 5000, 50, 5000)
    assert test["worse"] is False
    assert test["p_value"] == pytest.approx(fisher_tail(50, 5000, 50, 5000), rel=1e-6)
    assert decide(healthy(), SETTINGS)["outcome"] == "pass"


def test_equal_true_rates_are_called_worse_about_alpha_of_the_time_at_most() -> None:
    """Both arms drawn at the same 1 % rate, 1,000 times. Fisher's test is conservative (its true
    false-alarm rate here is 4.4 %, by 20k simulations with the hypergeometric tail); the bound is
    alpha plus 3 sd of a 5 % share of 1,000 (0.69 %), and the floor shows the test can reject at all."""
    rng = np.random.default_rng(7)
    draws = rng.binomial(5000, 0.01, size=(1000, 2))
    calls = [error_rate_test(int(c), 5000, int(x), 5000)["worse"] for c, x in draws]
    share = sum(calls) / len(calls)
    assert 0.02 <= share <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 1000)


def test_a_better_challenger_is_never_worse() -> None:
    test = error_rate_test(150, 5000, 50, 5000)
    assert test["worse"] is False and test["p_value"] > 0.99


def test_the_error_test_on_empty_arms_and_impossible_counts() -> None:
    empty = error_rate_test(0, 0, 0, 0)
    assert empty["p_value"] == 1.0 and empty["worse"] is False and empty["champion_rate"] is None
    assert error_rate_test(0, 100, 0, 100)["worse"] is False  # no errors anywhere: nothing to say
    for bad in [(5, 4, 0, 10), (0, 10, 11, 10), (-1, 10, 0, 10), (0, 10.0, 0, 10), (True, 10, 0, 10)]:
        with pytest.raises(ValueError):
            error_rate_test(*bad)  # type: ignore[arg-type]


def test_alpha_decides_what_is_significant() -> None:
    p = fisher_tail(40, 5000, 58, 5000)
    assert 0.01 < p < 0.1  # a borderline difference, by construction
    assert error_rate_test(40, 5000, 58, 5000, alpha=p * 1.01)["worse"] is True
    assert error_rate_test(40, 5000, 58, 5000, alpha=p * 0.99)["worse"] is False


# --- inconclusive ---


def test_fifty_requests_are_inconclusive_even_with_many_errors() -> None:
    figures = healthy(challenger=arm(50, 25))
    decision = decide(figures, SETTINGS)
    assert decision["outcome"] == "inconclusive"
    assert decision["reasons"] == [
        "the challenger has 50 requests, fewer than the 500 needed to compare the arms."
    ]
    both = decide(healthy(champion=arm(50, 0), challenger=arm(49, 0)), SETTINGS)
    assert both["outcome"] == "inconclusive" and len(both["reasons"]) == 2


def test_a_missing_p99_waits_but_a_failure_still_fails() -> None:
    waiting = decide(healthy(challenger=arm(5000, 50, None, roc_auc=0.85, log_loss=0.39)), SETTINGS)
    assert waiting["outcome"] == "inconclusive"
    assert waiting["reasons"] == ["p99 latency: not known for the challenger, so the step waits."]
    failing = decide(healthy(challenger=arm(5000, 150, None)), SETTINGS)
    assert failing["outcome"] == "fail"


# --- latency ---


@pytest.mark.parametrize(
    ("champion", "challenger", "ok", "ratio"),
    [(10.0, 12.0, True, 1.2), (10.0, 12.1, False, 1.21), (10.0, 5.0, True, 0.5), (0.0, 0.0, True, 1.0)],
)
def test_latency_check_against_the_ratio(champion: float, challenger: float, ok: bool, ratio: float) -> None:
    check = latency_check(champion, challenger, max_ratio=1.2)
    assert check["ok"] is ok
    assert check["ratio"] == pytest.approx(ratio)


def test_a_challenger_slower_than_a_zero_champion_p99_fails() -> None:
    check = latency_check(0.0, 1.0)
    assert check["ratio"] == math.inf and check["ok"] is False


def test_a_slow_challenger_fails_the_step() -> None:
    decision = decide(healthy(challenger=arm(5000, 50, 15.0, roc_auc=0.85, log_loss=0.39)), SETTINGS)
    assert decision["outcome"] == "fail"
    assert decision["reasons"] == [
        "p99 latency: challenger 15.0 ms is 1.50x the champion's 10.0 ms, above the 1.2x allowed."
    ]


# --- agreement ---


def test_the_agreement_matrix_counted_by_hand() -> None:
    champion = ["a", "a", "b", "b", "c", "a"]
    challenger = ["a", "b", "b", "c", "c", "a"]
    found = agreement(champion, challenger)
    assert found["compared"] == 6 and found["agreed"] == 4
    assert found["rate"] == pytest.approx(4 / 6)
    assert found["matrix"] == {
        "a": {"a": 2, "b": 1, "c": 0},
        "b": {"a": 0, "b": 1, "c": 1},
        "c": {"a": 0, "b": 0, "c": 1},
    }
    assert json.loads(json.dumps(found)) == found  # JSON as is, string keys


def test_the_matrix_keys_are_strings_and_cover_the_given_classes() -> None:
    found = agreement(np.array([0, 1, 1]), np.array([0, 0, 1]), classes=[0, 1, 2])
    assert found["matrix"] == {
        "0": {"0": 1, "1": 0, "2": 0},
        "1": {"0": 1, "1": 1, "2": 0},
        "2": {"0": 0, "1": 0, "2": 0},
    }
    assert "score_difference" not in found  # no probabilities, no score quantiles


def test_score_difference_quantiles_against_numpy() -> None:
    rng = np.random.default_rng(3)
    positive_c = rng.uniform(size=2_000)
    positive_x = np.clip(positive_c + rng.normal(0, 0.05, size=2_000), 0, 1)
    proba_c = np.column_stack([1 - positive_c, positive_c])
    proba_x = np.column_stack([1 - positive_x, positive_x])
    labels_c = np.where(positive_c >= 0.5, "yes", "no")
    labels_x = np.where(positive_x >= 0.5, "yes", "no")
    found = agreement(labels_c, labels_x, proba_c, proba_x)
    difference = np.abs(positive_c - positive_x)  # two classes: the positive class's difference
    expected = {
        "p50": np.percentile(difference, 50),
        "p90": np.percentile(difference, 90),
        "p99": np.percentile(difference, 99),
        "max": difference.max(),
    }
    assert found["score_difference"] == pytest.approx(expected, rel=1e-12)
    assert found["rate"] == pytest.approx(np.mean(labels_c == labels_x))
    assert json.loads(json.dumps(found)) == found


def test_multiclass_score_difference_is_the_largest_class_difference() -> None:
    proba_c = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    proba_x = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    found = agreement(["a", "c"], ["a", "b"], proba_c, proba_x)
    assert found["score_difference"]["max"] == pytest.approx(0.3)
    assert found["score_difference"]["p50"] == pytest.approx((0.1 + 0.3) / 2)


def test_agreement_refuses_unpaired_answers_and_handles_none() -> None:
    with pytest.raises(ValueError, match="pair"):
        agreement(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="shape"):
        agreement(["a"], ["a"], np.array([[0.5, 0.5]]), np.array([[0.2, 0.3, 0.5]]))
    empty = agreement([], [], np.empty((0, 2)), np.empty((0, 2)))
    assert empty["rate"] is None and empty["score_difference"]["p99"] is None
    assert quantiles([]) == {"p50": None, "p90": None, "p99": None, "max": None}


def test_numeric_agreement_within_a_tolerance() -> None:
    found = numeric_agreement([1.0, 2.0, 3.0, 4.0], [1.05, 2.5, 3.0, 3.9], tolerance=0.1)
    assert found["agreed"] == 3 and found["rate"] == 0.75
    assert found["score_difference"]["max"] == pytest.approx(0.5)
    assert found["score_difference"]["p50"] == pytest.approx(np.percentile([0.05, 0.5, 0.0, 0.1], 50))


def test_low_agreement_fails_and_unmeasured_agreement_is_not_judged() -> None:
    low = decide(healthy(agreement={"compared": 5000, "agreed": 4000, "rate": 0.8}), SETTINGS)
    assert low["outcome"] == "fail"
    assert low["reasons"] == [
        "agreement: the arms agree on 80.0% of 5000 compared answers, below the 90.0% required."
    ]
    figures = healthy()
    del figures["agreement"]
    unmeasured = decide(figures, SETTINGS)
    assert unmeasured["outcome"] == "pass"
    assert "agreement: not measured on this traffic, so not judged." in unmeasured["reasons"]


# --- live performance ---


def test_live_performance_per_arm_against_scikit_learn() -> None:
    rng = np.random.default_rng(5)
    truth = rng.choice(["no", "yes"], size=600, p=[0.7, 0.3])
    signal = (truth == "yes").astype(float)
    good = np.clip(0.5 * signal + rng.uniform(0, 0.5, 600), 0.01, 0.99)  # informative by construction
    poor = np.clip(0.1 * signal + rng.uniform(0, 0.9, 600), 0.01, 0.99)
    arms = {
        "champion": {"labels": truth[:300], "answers": np.column_stack([1 - good[:300], good[:300]])},
        "challenger": {"labels": truth[300:], "answers": np.column_stack([1 - poor[300:], poor[300:]])},
    }
    found = live_performance_per_arm(arms, classes=["no", "yes"], positive="yes", min_labels=100)
    for name, scores, rows in (
        ("champion", good[:300], truth[:300]),
        ("challenger", poor[300:], truth[300:]),
    ):
        metrics = found[name]["metrics"]
        assert found[name]["labelled"] == 300
        assert metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(rows == "yes", scores))
        assert metrics["accuracy"] == pytest.approx(
            skm.accuracy_score(rows, np.where(scores >= 0.5, "yes", "no"))
        )
        assert metrics["log_loss"] == pytest.approx(
            skm.log_loss(rows, np.column_stack([1 - scores, scores]), labels=["no", "yes"])
        )
    # The challenger ranks worse by construction, by far more than the 0.02 allowed.
    figures = healthy(
        champion=arm(5000, 50, 10.0, **found["champion"]["metrics"]),
        challenger=arm(5000, 50, 10.0, **found["challenger"]["metrics"]),
    )
    decision = decide(figures, SETTINGS)
    assert decision["outcome"] == "fail"
    assert any(
        r.startswith("live roc_auc: challenger") and "more than the 0.02 allowed" in r
        for r in decision["reasons"]
    )


def test_too_few_labels_give_no_metrics_and_are_not_judged() -> None:
    arms = {
        "champion": {"labels": ["no", "yes"], "answers": [[0.8, 0.2], [0.3, 0.7]]},
        "challenger": {"labels": [], "answers": np.empty((0, 2))},
    }
    found = live_performance_per_arm(arms, classes=["no", "yes"], positive="yes", min_labels=100)
    assert found == {
        "champion": {"labelled": 2, "metrics": None},
        "challenger": {"labelled": 0, "metrics": None},
    }
    decision = decide(healthy(challenger=arm(5000, 50, 11.0)), SETTINGS)
    assert decision["outcome"] == "pass"
    assert "live roc_auc: not known for both arms (too few labels), so not judged." in decision["reasons"]


def test_a_metric_a_window_cannot_define_is_none() -> None:
    arms = {"champion": {"labels": ["yes", "yes"], "answers": [[0.2, 0.8], [0.4, 0.6]]}}
    metrics = live_performance_per_arm(arms, classes=["no", "yes"], positive="yes")["champion"]["metrics"]
    assert metrics["roc_auc"] is None and metrics["accuracy"] == 1.0


def test_a_binary_classifier_needs_its_positive_class() -> None:
    arms = {"champion": {"labels": ["yes", "no"], "answers": [[0.2, 0.8], [0.6, 0.4]]}}
    with pytest.raises(ValueError, match="positive"):
        live_performance_per_arm(arms, classes=["no", "yes"])


def test_regression_arms_against_scikit_learn() -> None:
    truth, predicted = [1.0, 2.0, 3.0, 4.0], [1.1, 1.9, 3.3, 3.8]
    found = live_performance_per_arm({"champion": {"labels": truth, "answers": predicted}})
    assert found["champion"]["metrics"] == pytest.approx(
        {
            "r2": skm.r2_score(truth, predicted),
            "rmse": skm.root_mean_squared_error(truth, predicted),
            "mae": skm.mean_absolute_error(truth, predicted),
        }
    )


def test_a_lower_is_better_metric_is_judged_the_right_way_round() -> None:
    worse = decide(healthy(challenger=arm(5000, 50, 11.0, roc_auc=0.85, log_loss=0.50)), SETTINGS)
    assert worse["outcome"] == "fail"
    assert worse["reasons"] == [
        "live log_loss: challenger 0.5000 vs champion 0.4000, worse by 0.1000, more than the 0.05 allowed."
    ]
    on_the_bound = decide(healthy(challenger=arm(5000, 50, 11.0, roc_auc=0.82, log_loss=0.45)), SETTINGS)
    assert on_the_bound["outcome"] == "pass"  # 0.84 - 0.82 is 0.0200000…01 in floats: on the bound


# --- the decision as a whole ---


def test_a_pass_lists_every_check_as_a_sentence() -> None:
    decision = decide(healthy(), SETTINGS)
    assert decision["outcome"] == "pass"
    kinds = [reason.split(":")[0] for reason in decision["reasons"]]
    assert kinds == ["error rate", "p99 latency", "agreement", "live log_loss", "live roc_auc"]
    assert all(is_sentence(reason) for reason in decision["reasons"]), decision["reasons"]
    assert json.loads(json.dumps(decision)) == decision


def test_every_failure_is_reported_at_once() -> None:
    figures = healthy(
        challenger=arm(5000, 200, 20.0, roc_auc=0.70, log_loss=0.39),
        agreement={"compared": 5000, "agreed": 3000, "rate": 0.6},
    )
    decision = decide(figures, SETTINGS)
    assert decision["outcome"] == "fail"
    assert [r.split(":")[0] for r in decision["reasons"]] == [
        "error rate",
        "p99 latency",
        "agreement",
        "live roc_auc",
    ]
    assert all(is_sentence(reason) for reason in decision["reasons"]), decision["reasons"]


def test_no_minimum_agreement_reports_it_without_judging() -> None:
    settings = SETTINGS | {"min_agreement": None, "max_metric_drop": {}}
    decision = decide(healthy(agreement={"compared": 10, "agreed": 1, "rate": 0.1}), settings)
    assert decision["outcome"] == "pass"
    assert any("reported, not judged" in reason for reason in decision["reasons"])


@pytest.mark.parametrize(
    "change",
    [
        {"min_requests": 0},
        {"min_requests": 10.5},
        {"alpha": 0},
        {"alpha": 1.5},
        {"alpha": True},
        {"max_p99_ratio": 0.9},
        {"max_p99_ratio": None},
        {"min_agreement": 1.5},
        {"max_metric_drop": {"auc": 0.1}},
        {"max_metric_drop": {"roc_auc": -0.1}},
        {"max_metric_drop": {"roc_auc": math.nan}},
        {"max_metric_drop": 0.1},
    ],
    ids=repr,
)
def test_settings_that_would_turn_a_check_off_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(ParamsError, match=r"rollout\.analysis\."):
        decide(healthy(), SETTINGS | change)
