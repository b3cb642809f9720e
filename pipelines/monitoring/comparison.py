"""The rollout analysis: the champion arm against the challenger arm, on the same traffic.

Argo Rollouts and Flagger judge a canary by its error rate and latency only; this also asks whether
the new *model* is right: how often the arms agree, and, where labels exist, the training metrics
per arm. Each function takes plain per-arm figures (counts, latencies, paired predictions), never
files, and `decide()` judges them as the gate does: one small function over a dict, with its
tolerances as settings (`params.yaml`, `rollout.analysis`).

    figures = {
      "champion":   {"requests": int, "errors": int, "p99_ms": float | None,
                     "metrics": {<training metric>: float | None}},   # metrics: optional
      "challenger": {... the same ...},
      "agreement":  agreement() or numeric_agreement(),                 # optional
    }
    settings = {
      "min_requests": int,            # per arm, before anything is judged
      "alpha": float,                 # the error test's significance level
      "max_p99_ratio": float,         # challenger p99 / champion p99
      "min_agreement": float | None,  # None: agreement is reported, never judged
      "max_metric_drop": {<metric>: float},  # how much worse than the champion a live metric may be
    }

Outcomes: `inconclusive` while either arm has fewer than `min_requests` requests (or a p99 is
missing): the step waits. `fail` when any check fails; `pass` otherwise. A check without its
figures (no agreement measured, no labels yet) is not judged, and the reasons say so.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats
from sklearn.exceptions import UndefinedMetricWarning

from pipelines.core.errors import ParamsError
from pipelines.modeling.metrics import GREATER_IS_BETTER, classification_scores, regression_scores

Outcome = Literal["pass", "fail", "inconclusive"]
ARMS = ("champion", "challenger")
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
BOUND_TOLERANCE = 1e-9  # a difference within float rounding of its bound counts as on it


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a whole number of at least 0, not {value!r}")
    return int(value)


def _rate(errors: int, total: int) -> float | None:
    return errors / total if total else None


def error_rate_test(
    errors_c: int, total_c: int, errors_x: int, total_x: int, alpha: float = 0.05
) -> dict[str, Any]:
    """One-sided test of "the challenger's error rate is not worse than the champion's" (`_c`:
    champion, `_x`: challenger). `worse` is True when that is rejected at `alpha`.

    Fisher's exact test on the 2x2 table, alternative "greater" (the challenger's odds of an error
    are higher). Exact, because error counts are small: a healthy service has few or none, and a
    two-proportion z-test is unreliable there (undefined at zero errors in both arms). It is
    conservative, so a "worse" verdict is trustworthy; enough requests (`min_requests`) give it power.
    """
    errors_c, total_c = _count(errors_c, "champion errors"), _count(total_c, "champion requests")
    errors_x, total_x = _count(errors_x, "challenger errors"), _count(total_x, "challenger requests")
    if errors_c > total_c or errors_x > total_x:
        raise ValueError("an arm cannot have more errors than requests")
    p_value = 1.0
    if total_c and total_x:
        table = [[errors_x, total_x - errors_x], [errors_c, total_c - errors_c]]
        p_value = float(stats.fisher_exact(table, alternative="greater").pvalue)
    return {
        "champion_rate": _rate(errors_c, total_c),
        "challenger_rate": _rate(errors_x, total_x),
        "p_value": p_value,
        "alpha": alpha,
        "worse": p_value < alpha,
    }


def quantiles(values: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """p50, p90, p99 (numpy's default, linear interpolation) and max of the values; None when empty."""
    data = np.asarray(values, dtype=float).ravel()
    if data.size == 0:
        return {**dict.fromkeys(QUANTILES), "max": None}
    found = np.quantile(data, list(QUANTILES.values()))
    return {**{name: float(q) for name, q in zip(QUANTILES, found, strict=True)}, "max": float(data.max())}


def latency_check(p99_champion: float, p99_challenger: float, max_ratio: float = 1.2) -> dict[str, Any]:
    """Whether the challenger's p99 latency is at most `max_ratio` times the champion's. Two p99s of
    0 (below the clock's resolution) are equal; a challenger p99 above a champion's 0 is infinitely slower."""
    tie = 1.0 if p99_challenger <= 0 else math.inf
    ratio = p99_challenger / p99_champion if p99_champion > 0 else tie
    return {
        "champion_p99_ms": float(p99_champion),
        "challenger_p99_ms": float(p99_challenger),
        "ratio": ratio,
        "max_ratio": max_ratio,
        "ok": ratio <= max_ratio * (1 + BOUND_TOLERANCE),
    }


def _labels(values: Sequence[Any] | np.ndarray) -> list[str]:
    """Class labels as text: the matrix's keys are strings, and "1" from a log equals 1 from a model."""
    return [str(v) for v in np.asarray(values, dtype=object).ravel()]


def agreement(
    champion_pred: Sequence[Any] | np.ndarray,
    challenger_pred: Sequence[Any] | np.ndarray,
    champion_proba: np.ndarray | None = None,
    challenger_proba: np.ndarray | None = None,
    classes: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """How far two classifiers' answers to the same records agree.

    - `rate`: the share of records both arms gave the same class (None when nothing was compared);
    - `score_difference`: with both arms' probabilities (rows: records, columns: the same classes
      in the same order), quantiles of each record's largest |probability difference| over the
      classes; for two classes that is the difference in the positive class's probability;
    - `matrix`: counts by {champion class: {challenger class: n}}, every class as a row and a column
      (`classes`, else the classes seen, sorted); the diagonal holds agreements, the rest disagreements.
    """
    champion, challenger = _labels(champion_pred), _labels(challenger_pred)
    if len(champion) != len(challenger):
        raise ValueError(f"the arms answered {len(champion)} and {len(challenger)} records: pair them first")
    agreed = sum(c == x for c, x in zip(champion, challenger, strict=True))
    names = _labels(classes) if classes is not None else sorted(set(champion) | set(challenger))
    pairs = Counter(zip(champion, challenger, strict=True))
    result: dict[str, Any] = {
        "compared": len(champion),
        "agreed": agreed,
        "rate": agreed / len(champion) if champion else None,
        "matrix": {c: {x: pairs.get((c, x), 0) for x in names} for c in names},
    }
    if champion_proba is not None and challenger_proba is not None:
        result["score_difference"] = quantiles(score_differences(champion_proba, challenger_proba))
    return result


def score_differences(champion_proba: np.ndarray, challenger_proba: np.ndarray) -> np.ndarray:
    """Per record, the largest |difference| between the arms' probabilities over the classes."""
    c, x = np.asarray(champion_proba, dtype=float), np.asarray(challenger_proba, dtype=float)
    if c.shape != x.shape or c.ndim != 2:
        raise ValueError(f"probabilities must be two tables of the same shape, not {c.shape} and {x.shape}")
    return np.abs(c - x).max(axis=1) if c.size else np.empty(0)


def numeric_agreement(
    champion_pred: Sequence[float] | np.ndarray,
    challenger_pred: Sequence[float] | np.ndarray,
    tolerance: float,
) -> dict[str, Any]:
    """The regression form: two answers agree when they are within `tolerance` of each other (float
    rounding aside: 4.0 - 3.9 is 0.1000…09), and
    `score_difference` holds the quantiles of |champion - challenger|."""
    c, x = np.asarray(champion_pred, dtype=float), np.asarray(challenger_pred, dtype=float)
    if c.shape != x.shape:
        raise ValueError(f"the arms answered {c.size} and {x.size} records: pair them first")
    difference = np.abs(c - x)
    agreed = int(np.sum(difference <= tolerance * (1 + BOUND_TOLERANCE) + BOUND_TOLERANCE))
    return {
        "compared": int(c.size),
        "agreed": agreed,
        "rate": agreed / c.size if c.size else None,
        "tolerance": tolerance,
        "score_difference": quantiles(difference),
    }


def arm_scores(
    labels: Sequence[Any],
    answers: np.ndarray,
    classes: Sequence[Any] | None,
    positive: Any = None,
) -> dict[str, float | None]:
    """The training metrics of one arm on its labelled records, as the monitor's window_scores
    computes them: `answers` are probabilities (rows: records, columns: `classes`) for a classifier,
    predictions for a regressor (`classes` None). A metric the records cannot define is None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if classes is not None:
            names = np.array(_labels(classes), dtype=str)
            if len(names) == 2 and positive is None:
                raise ValueError("a binary classifier's metrics need its positive class")
            truth = np.array(_labels(labels), dtype=str)
            proba = np.asarray(answers, dtype=float)
            scores = classification_scores(truth, proba, names, None if positive is None else str(positive))
        else:
            scores = regression_scores(np.asarray(labels, dtype=float), np.asarray(answers, dtype=float))
    return {name: (value if math.isfinite(value) else None) for name, value in scores.items()}


def live_performance_per_arm(
    arms: Mapping[str, Mapping[str, Any]],
    classes: Sequence[Any] | None = None,
    positive: Any = None,
    min_labels: int = 1,
) -> dict[str, dict[str, Any]]:
    """Per arm, {"labelled": n, "metrics": {...} | None}: the training metrics on the arm's labelled
    records, None below `min_labels` (a handful of labels says little). Each arm is
    {"labels": [...], "answers": probabilities or predictions}, as arm_scores takes them."""
    result = {}
    for arm, rows in arms.items():
        labelled = len(rows["labels"])
        enough = labelled >= min_labels and labelled > 0
        metrics = arm_scores(rows["labels"], rows["answers"], classes, positive) if enough else None
        result[arm] = {"labelled": labelled, "metrics": metrics}
    return result


def check_settings(settings: Mapping[str, Any]) -> None:
    """Refuses settings that would silently turn a check off or invert it (one readable line)."""

    def number(key: str, low: float, high: float = math.inf) -> bool:
        value = settings.get(key)
        return not isinstance(value, bool) and isinstance(value, int | float) and low <= value <= high

    minimum = settings.get("min_requests")
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise ParamsError("rollout.analysis.min_requests must be a whole number of at least 1")
    if not number("alpha", 0.0, 1.0) or settings["alpha"] in (0, 1):
        raise ParamsError("rollout.analysis.alpha must be a number between 0 and 1")
    if not number("max_p99_ratio", 1.0):
        raise ParamsError("rollout.analysis.max_p99_ratio must be a number of at least 1")
    if settings.get("min_agreement") is not None and not number("min_agreement", 0.0, 1.0):
        raise ParamsError("rollout.analysis.min_agreement must be a number from 0 to 1, or null")
    drops = settings.get("max_metric_drop") or {}
    if not isinstance(drops, Mapping):
        raise ParamsError("rollout.analysis.max_metric_drop must map metric names to numbers")
    for metric, bound in drops.items():
        if metric not in GREATER_IS_BETTER:
            raise ParamsError(f"rollout.analysis.max_metric_drop: {metric} is not a training metric")
        if isinstance(bound, bool) or not isinstance(bound, int | float) or not bound >= 0:
            raise ParamsError(f"rollout.analysis.max_metric_drop.{metric} must be a number of at least 0")


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.2%}"


def error_reason(test: Mapping[str, Any], arms: Mapping[str, Mapping[str, Any]]) -> str:
    c, x = arms["champion"], arms["challenger"]
    figures = (
        f"error rate: challenger {_percent(test['challenger_rate'])} ({x['errors']} of {x['requests']}) "
        f"vs champion {_percent(test['champion_rate'])} ({c['errors']} of {c['requests']}); "
        f"one-sided Fisher p = {test['p_value']:.3g}"
    )
    if test["worse"]:
        return f"{figures}, below alpha {test['alpha']:g}: the challenger makes more errors."
    return f"{figures}, not below alpha {test['alpha']:g}: the challenger is not shown to make more errors."


def latency_reason(check: Mapping[str, Any]) -> str:
    figures = (
        f"p99 latency: challenger {check['challenger_p99_ms']:.1f} ms is {check['ratio']:.2f}x "
        f"the champion's {check['champion_p99_ms']:.1f} ms"
    )
    relation = "within" if check["ok"] else "above"
    return f"{figures}, {relation} the {check['max_ratio']:g}x allowed."


def agreement_check(found: Mapping[str, Any] | None, minimum: float | None) -> tuple[bool | None, str]:
    """(ok, reason); ok is None when agreement was not measured or is not judged."""
    rate = (found or {}).get("rate")
    if rate is None:
        return None, "agreement: not measured on this traffic, so not judged."
    figures = f"agreement: the arms agree on {rate:.1%} of {found['compared']} compared answers"  # type: ignore[index]
    if minimum is None:
        return None, f"{figures} (reported, not judged: no minimum is set)."
    ok = rate >= minimum - BOUND_TOLERANCE
    return ok, f"{figures}, {'at or above' if ok else 'below'} the {minimum:.1%} required."


def metric_checks(
    champion: Mapping[str, float | None], challenger: Mapping[str, float | None], drops: Mapping[str, float]
) -> list[tuple[bool | None, str]]:
    """(ok, reason) per bounded metric; ok is None when either arm lacks the figure (too few labels)."""
    found = []
    for metric, bound in sorted(drops.items()):
        old, new = champion.get(metric), challenger.get(metric)
        if old is None or new is None:
            found.append((None, f"live {metric}: not known for both arms (too few labels), so not judged."))
            continue
        drop = (old - new) if GREATER_IS_BETTER[metric] else (new - old)
        ok = drop <= bound + BOUND_TOLERANCE * max(1.0, abs(bound))
        verdict = "within" if ok else "more than"
        found.append(
            (
                ok,
                f"live {metric}: challenger {new:.4f} vs champion {old:.4f}, worse by {max(drop, 0.0):.4f}, "
                f"{verdict} the {bound:g} allowed.",
            )
        )
    return found


def too_few(arms: Mapping[str, Mapping[str, Any]], minimum: int) -> list[str]:
    return [
        f"the {arm} has {arms[arm]['requests']} requests, fewer than the {minimum} needed to compare the arms."
        for arm in ARMS
        if arms[arm]["requests"] < minimum
    ]


def decide(figures: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The step's outcome and its reasons (module docstring): inconclusive below `min_requests`
    per arm, else fail if any check fails, inconclusive if a p99 is missing, else pass. The reasons
    of a fail are the failed checks; of a pass, every check and what was not judged."""
    check_settings(settings)
    arms = {arm: figures[arm] for arm in ARMS}
    waiting = too_few(arms, settings["min_requests"])
    if waiting:
        return {"outcome": "inconclusive", "reasons": waiting}
    results: list[tuple[bool | None, str]] = []
    c, x = arms["champion"], arms["challenger"]
    test = error_rate_test(c["errors"], c["requests"], x["errors"], x["requests"], settings["alpha"])
    results.append((not test["worse"], error_reason(test, arms)))
    if c.get("p99_ms") is None or x.get("p99_ms") is None:
        missing = [arm for arm in ARMS if arms[arm].get("p99_ms") is None]
        waiting.append(f"p99 latency: not known for the {' and the '.join(missing)}, so the step waits.")
    else:
        check = latency_check(c["p99_ms"], x["p99_ms"], settings["max_p99_ratio"])
        results.append((check["ok"], latency_reason(check)))
    results.append(agreement_check(figures.get("agreement"), settings.get("min_agreement")))
    drops = settings.get("max_metric_drop") or {}
    results += metric_checks(c.get("metrics") or {}, x.get("metrics") or {}, drops)
    failed = [reason for ok, reason in results if ok is False]
    if failed:
        return {"outcome": "fail", "reasons": failed}
    if waiting:
        return {"outcome": "inconclusive", "reasons": waiting}
    return {"outcome": "pass", "reasons": [reason for _, reason in results]}
