"""pipelines/monitoring/arms.py: the rollout step read per arm from log files written here in the
contract's format (docs/rollout.md: `role` on every line, `by_role` on outcome lines), then judged.

The oracles are the traffic the tests wrote: how many requests each arm answered or failed, the
latencies chosen (numpy's quantiles of them), which answers were made to differ (scikit-learn's
confusion matrix and roc_auc on them)."""

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from pipelines.monitoring import arms, labels

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
VERSIONS = {"champion": "1", "challenger": "2"}
SETTINGS = {
    "min_requests": 50,
    "alpha": 0.05,
    "max_p99_ratio": 1.2,
    "min_agreement": 0.9,
    "max_metric_drop": {"roc_auc": 0.01, "accuracy": 0.01},
}


def line(request, record, version, role, p_yes, latency, at):
    return {
        "request_id": request,
        "record": record,
        "timestamp": at.isoformat(),
        "model_version": version,
        "role": role,
        "latency_ms": latency,
        "inputs": {"x": float(record)},
        "prediction": "yes" if p_yes >= 0.5 else "no",
        "probabilities": {"no": 1 - p_yes, "yes": p_yes},
    }


def write_lines(root, lines, worker="0"):
    folder = root / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"predictions.{worker}.jsonl", "a") as out:
        out.writelines(json.dumps(x) + "\n" for x in lines)


def write_outcomes(root, by_role, at=START, worker="0"):
    folder = root / "outcomes"
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"worker": worker, "window_start": at.isoformat(), "window_s": 60.0, "counts": {"ok": 1}}
    if by_role is not None:
        entry["by_role"] = by_role
    with open(folder / f"outcomes.{worker}.jsonl", "a") as out:
        out.write(json.dumps(entry) + "\n")


def traffic(n, champion_p, challenger_p, canary=(), shadow_dropped=(), latency=None, records=1):
    """n requests of `records` records: the champion answers (role champion) and the challenger
    writes shadow lines, except requests in `canary` (answered by the challenger, the champion
    shadows). `shadow_dropped` requests have no shadow line."""
    rng = np.random.default_rng(0)
    latency = latency or {"1": lambda: rng.uniform(2, 4), "2": lambda: rng.uniform(2, 4)}
    found = []
    for i in range(n):
        at = START + timedelta(seconds=1 + i)
        answering, other = ("2", "1") if i in canary else ("1", "2")
        request = f"r{i}"
        p = {"1": champion_p(i), "2": challenger_p(i)}
        answer_ms, shadow_ms = latency[answering](), latency[other]()
        role = "challenger" if answering == "2" else "champion"
        for k in range(records):
            found.append(line(request, k, answering, role, p[answering], answer_ms, at))
            if i not in shadow_dropped:
                found.append(line(request, k, other, "shadow", p[other], shadow_ms, at))
    return found


def analyse(root, mode, settings=SETTINGS, **extra):
    lines, outcomes, found = arms.read_step(root, pd.Timestamp(START), VERSIONS)
    figures = arms.figures(lines, outcomes, pd.Timestamp(START), mode, found, **extra)
    return figures, arms.judge(figures, settings, mode, extra.get("share", 0.0))


def probability(i):
    return 0.2 + 0.6 * ((i * 7919) % 100) / 99  # spread over 0.2-0.8, both classes


def test_a_challenger_that_always_disagrees_fails_in_shadow(tmp_path):
    write_lines(tmp_path, traffic(100, probability, lambda i: 1 - probability(i)))
    figures, decision = analyse(tmp_path, "shadow")
    assert figures["agreement"]["compared"] == 100 and figures["agreement"]["rate"] == 0.0
    assert decision["outcome"] == "fail"
    assert any(r.startswith("agreement:") and "below" in r for r in decision["reasons"])


def test_an_equal_challenger_passes_in_shadow_and_its_latency_is_not_judged(tmp_path):
    slow = {"1": lambda: 2.0, "2": lambda: 50.0}  # 25x the champion's p99: only a shadow call's time
    write_lines(tmp_path, traffic(100, probability, probability, latency=slow))
    figures, decision = analyse(tmp_path, "shadow")
    assert decision["outcome"] == "pass", decision
    assert figures["agreement"]["rate"] == 1.0
    assert figures["agreement"]["score_difference"]["max"] == 0.0
    assert figures["challenger"]["requests"] == 100 and figures["challenger"]["answered"] == 0
    assert figures["challenger"]["shadow_latency_ms"]["p99"] == 50.0
    assert arms.LATENCY_NOT_JUDGED in decision["reasons"]
    assert not any(r.startswith("p99 latency: challenger") for r in decision["reasons"])


def test_too_few_requests_is_inconclusive(tmp_path):
    write_lines(tmp_path, traffic(30, probability, probability))
    figures, decision = analyse(tmp_path, "shadow")
    assert figures["champion"]["requests"] == 30
    assert decision["outcome"] == "inconclusive"
    assert decision["reasons"][0].startswith("the champion has 30 requests")


def test_canary_requests_errors_and_latency_per_arm(tmp_path):
    canary = set(range(0, 400, 4))  # 100 of 400 requests answered by the challenger
    latency = {"1": iter(np.linspace(1, 10, 800)).__next__, "2": iter(np.linspace(1, 10, 800)).__next__}
    lines = traffic(400, probability, probability, canary=canary, latency=latency)
    write_lines(tmp_path, lines)
    # The window before the step (ends at START) is not counted; the one overlapping it is.
    write_outcomes(tmp_path, {"challenger": {"error": 50}}, at=START - timedelta(seconds=60))
    write_outcomes(tmp_path, {"champion": {"ok": 300, "error": 1}, "challenger": {"ok": 100, "error": 12}})
    write_outcomes(tmp_path, {"challenger": {"log_unavailable": 3}, "shadow": {"error": 40}}, worker="1")
    figures, decision = analyse(tmp_path, "canary")
    champion, challenger = figures["champion"], figures["challenger"]
    assert (champion["answered"], champion["errors"], champion["requests"]) == (300, 1, 301)
    assert (challenger["answered"], challenger["errors"], challenger["requests"]) == (100, 15, 115)
    frame = pd.DataFrame(lines)
    answered = frame[frame["role"] != "shadow"].drop_duplicates("request_id")
    for arm, version in VERSIONS.items():
        mine = answered[answered["model_version"] == version]["latency_ms"]
        assert figures[arm]["latency_ms"]["p99"] == pytest.approx(np.quantile(mine, 0.99))
        assert figures[arm]["p99_ms"] == figures[arm]["latency_ms"]["p99"]
    assert decision["outcome"] == "fail"  # 15 of 115 against 1 of 301
    assert decision["reasons"][0].startswith("error rate: challenger 13.04% (15 of 115)")


def test_canary_judges_the_challenger_p99(tmp_path):
    slow = {"1": lambda: 2.0, "2": lambda: 5.0}
    write_lines(tmp_path, traffic(400, probability, probability, canary=set(range(0, 400, 2)), latency=slow))
    _, decision = analyse(tmp_path, "canary")
    assert decision["outcome"] == "fail"
    assert decision["reasons"] == [
        "p99 latency: challenger 5.0 ms is 2.50x the champion's 2.0 ms, above the 1.2x allowed."
    ]


def test_only_the_steps_lines_of_the_two_versions_count_and_dropped_shadows_are_not_compared(tmp_path):
    before = [line(f"old{i}", 0, "1", "champion", 0.9, 1.0, START - timedelta(seconds=1)) for i in range(50)]
    other = [line(f"v3-{i}", 0, "3", "champion", 0.9, 1.0, START + timedelta(seconds=1)) for i in range(50)]
    legacy = line("legacy", 0, "1", "champion", 0.9, 1.0, START + timedelta(seconds=2))
    del legacy["role"]  # a line from before roles: an answer of the champion
    write_lines(tmp_path, [*before, *other, legacy])
    write_lines(
        tmp_path, traffic(60, probability, probability, shadow_dropped=set(range(10)), records=3), "1"
    )
    figures, _ = analyse(tmp_path, "shadow")
    assert figures["champion"]["answered"] == 61
    assert figures["challenger"]["shadow_scored"] == 50
    assert figures["agreement"]["compared"] == 50 * 3


def test_the_disagreement_matrix_counts_each_class_pair(tmp_path):
    challenger = lambda i: probability(i) if i % 3 else 1 - probability(i)  # noqa: E731
    lines = traffic(90, probability, challenger)
    write_lines(tmp_path, lines)
    figures, _ = analyse(tmp_path, "shadow")
    frame = pd.DataFrame(lines)
    c = frame[frame["model_version"] == "1"].sort_values("request_id")["prediction"]
    x = frame[frame["model_version"] == "2"].sort_values("request_id")["prediction"]
    expected = confusion_matrix(c, x, labels=["no", "yes"])
    matrix = figures["agreement"]["matrix"]
    assert [[matrix[a][b] for b in ("no", "yes")] for a in ("no", "yes")] == expected.tolist()
    assert figures["agreement"]["rate"] == pytest.approx(np.trace(expected) / 90)


def test_live_metrics_per_arm_on_the_labelled_records(tmp_path):
    rng = np.random.default_rng(5)
    truth = {f"r{i}": ("yes" if rng.random() < probability(i) else "no") for i in range(200)}
    worse = lambda i: 0.5 + 0.3 * np.sin(i)  # noqa: E731  unrelated to the truth
    write_lines(tmp_path, traffic(200, probability, worse))
    (tmp_path / "feedback").mkdir()
    with open(tmp_path / "feedback" / "labels.t.jsonl", "w") as out:
        for request, label in truth.items():
            entry = {"request_id": request, "record": 0, "label": label, "source": "api"}
            out.write(json.dumps({**entry, "received_at": START.isoformat()}) + "\n")
    figures, decision = analyse(tmp_path, "shadow", positive="yes", min_labels=30)
    y = [truth[f"r{i}"] == "yes" for i in range(200)]
    for arm, p in (("champion", probability), ("challenger", worse)):
        scores = [p(i) for i in range(200)]
        assert figures[arm]["labelled"] == 200
        assert figures[arm]["metrics"]["roc_auc"] == pytest.approx(roc_auc_score(y, scores))
        assert figures[arm]["metrics"]["accuracy"] == pytest.approx(
            accuracy_score(y, np.array(scores) > 0.5)
        )  # a tie: the first class
    assert decision["outcome"] == "fail"
    assert any(r.startswith("live roc_auc:") for r in decision["reasons"])
    assert len(labels.read_labels(tmp_path)) == 200


def test_labels_for_none_of_the_steps_records_leave_live_metrics_unjudged(tmp_path):
    # Labels posted for earlier traffic (other request ids): the step's lines join to nothing.
    write_lines(tmp_path, traffic(100, probability, probability))
    (tmp_path / "feedback").mkdir()
    with open(tmp_path / "feedback" / "labels.t.jsonl", "w") as out:
        for i in range(50):
            entry = {"request_id": f"old{i}", "record": 0, "label": "yes", "source": "api"}
            out.write(json.dumps({**entry, "received_at": START.isoformat()}) + "\n")
    figures, decision = analyse(tmp_path, "shadow", positive="yes", min_labels=30)
    assert figures["champion"]["labelled"] == 0 and figures["challenger"]["labelled"] == 0
    assert decision["outcome"] == "pass"  # an equal challenger: nothing else to judge against it


def test_the_report_holds_the_figures_and_the_html_is_self_contained(tmp_path):
    write_lines(tmp_path, traffic(100, probability, lambda i: 1 - probability(i)))
    figures, decision = analyse(tmp_path, "shadow")
    state = {"mode": "shadow", "share": 0.0, "step": 0, "challenger": "2", "updated_at": START.isoformat()}
    found = arms.report(state, "1", figures, decision, SETTINGS, "2026-03-01T13:00:00+00:00")
    assert json.loads(json.dumps(found, allow_nan=False)) == found
    assert found["decision"]["outcome"] == "fail" and found["agreement"]["rate"] == 0.0
    assert found["arms"]["champion"]["requests"] == 100 and found["arms"]["champion"]["error_rate"] == 0.0
    assert set(found["agreement"]["score_difference"]) == {"p50", "p90", "p99", "max"}
    page = arms.render_html(found)
    assert page.startswith("<!DOCTYPE html>") and "FAIL" in page
    assert "data:image/png;base64," in page  # the figure inline: nothing to fetch
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for reason in decision["reasons"]:
        assert reason.replace("'", "&#x27;") in page


def test_at_a_canary_of_all_traffic_the_champion_is_judged_on_what_it_scored_in_shadow(tmp_path):
    """At 100 % the champion answers nothing: without its shadow scorings the last step could never
    have the champion's `min_requests`, and the rollout would wait forever."""
    slow = {"1": lambda: 50.0, "2": lambda: 2.0}  # the champion's shadow calls: not requests
    write_lines(tmp_path, traffic(100, probability, probability, canary=set(range(100)), latency=slow))
    write_outcomes(tmp_path, {"shadow": {"ok": 97, "error": 3}, "challenger": {"ok": 100}})
    figures, decision = analyse(tmp_path, "canary", share=1.0)
    assert figures["champion"]["answered"] == 0 and figures["champion"]["shadow_scored"] == 100
    assert figures["champion"]["requests"] == 100 + 3 and figures["champion"]["errors"] == 3
    assert figures["challenger"]["requests"] == 100 and figures["challenger"]["errors"] == 0
    assert decision["outcome"] == "pass", decision
    assert arms.LATENCY_NOT_JUDGED in decision["reasons"]


def test_at_a_canary_of_all_traffic_a_disagreeing_challenger_fails(tmp_path):
    write_lines(tmp_path, traffic(100, probability, lambda i: 1 - probability(i), canary=set(range(100))))
    figures, decision = analyse(tmp_path, "canary", share=1.0)
    assert figures["agreement"]["compared"] == 100 and figures["agreement"]["rate"] == 0.0
    assert decision["outcome"] == "fail"


@pytest.mark.parametrize(("mode", "share", "shadowed"), [
    ("shadow", 0.0, "challenger"),
    ("canary", 0.05, None),
    ("canary", 0.5, None),
    ("canary", 1.0, "champion"),
    ("off", 0.0, None),
])  # fmt: skip
def test_the_arm_that_only_shadows(mode, share, shadowed):
    assert arms.shadowed_arm(mode, share) == shadowed


def test_below_all_traffic_the_champion_is_judged_on_its_answers(tmp_path):
    write_lines(tmp_path, traffic(100, probability, probability, canary=set(range(50))))
    figures, _ = analyse(tmp_path, "canary", share=0.5)
    assert figures["champion"]["requests"] == figures["champion"]["answered"] == 50
    assert figures["challenger"]["requests"] == figures["challenger"]["answered"] == 50
