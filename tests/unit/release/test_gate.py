"""Unit tests of the promotion gate's rules (pure logic, no registry)."""

import pytest

from pipelines.core.errors import ParamsError
from pipelines.release.gate import decide, improvement, pick_challenger

RULES = {
    "primary_metric": "roc_auc",
    "min_delta": 0.002,
    "guards": {"log_loss": 0.02},
    "floors": {"roc_auc": 0.7},
}
BASELINE = {"roc_auc": 0.5, "accuracy": 0.73}


def scores(auc, loss=0.4, acc=0.8):
    return {"roc_auc": auc, "log_loss": loss, "accuracy": acc}


def test_improvement_respects_direction():
    assert improvement("roc_auc", 0.9, 0.8) == pytest.approx(0.1)
    assert improvement("log_loss", 0.3, 0.4) == pytest.approx(0.1)
    assert improvement("rmse", 5.0, 4.0) == pytest.approx(-1.0)


def test_challenger_is_best_by_primary_metric_either_direction():
    table = {"a": {"roc_auc": 0.8, "rmse": 3.0}, "b": {"roc_auc": 0.9, "rmse": 4.0}}
    assert pick_challenger(table, "roc_auc") == "b"
    assert pick_challenger(table, "rmse") == "a"
    with pytest.raises(ParamsError, match="primary_metric 'nope'"):
        pick_challenger(table, "nope")


def test_no_champion_floors_decide():
    assert decide(scores(0.8), None, BASELINE, RULES).promote
    refused = decide(scores(0.65), None, BASELINE, RULES)
    assert not refused.promote and any("floor roc_auc" in r for r in refused.reasons)


def test_needs_min_delta_over_champion():
    assert decide(scores(0.803), scores(0.800), BASELINE, RULES).promote
    refused = decide(scores(0.801), scores(0.800), BASELINE, RULES)
    assert not refused.promote and "needs >= 0.002" in refused.reasons[0]


def test_guard_metric_may_not_worsen_past_tolerance():
    refused = decide(scores(0.85, loss=0.50), scores(0.80, loss=0.40), BASELINE, RULES)
    assert not refused.promote
    assert any(r.startswith("guard log_loss") for r in refused.reasons)
    assert decide(scores(0.85, loss=0.41), scores(0.80, loss=0.40), BASELINE, RULES).promote


def test_must_beat_trivial_baseline():
    refused = decide(scores(0.9, acc=0.70), None, BASELINE, RULES)
    assert not refused.promote
    assert any(r.startswith("baseline accuracy") for r in refused.reasons)
