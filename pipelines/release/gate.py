"""The promotion gate: pure rules that decide whether a challenger replaces the champion."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipelines.core.errors import ParamsError
from pipelines.modeling.metrics import GREATER_IS_BETTER


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)


def improvement(metric: str, new: float, old: float) -> float:
    """How much better `new` is than `old` (negative when worse), whatever the metric's direction."""
    return new - old if GREATER_IS_BETTER[metric] else old - new


def pick_challenger(scores: dict[str, dict[str, float]], metric: str) -> str:
    """The candidate with the best holdout value of the primary metric (ties: first by name)."""
    if not scores:
        raise ParamsError("no evaluated candidates to choose a challenger from")
    unknown = [name for name, s in scores.items() if metric not in s]
    if metric not in GREATER_IS_BETTER or unknown:
        raise ParamsError(f"promote.primary_metric '{metric}' is not a metric of the candidates")
    sign = 1.0 if GREATER_IS_BETTER[metric] else -1.0
    return max(sorted(scores), key=lambda name: sign * scores[name][metric])


def rules_for(rules: dict[str, Any], task: str, metrics: set[str]) -> dict[str, Any]:
    """The gate's rules for this task: the primary metric (null: the task's default), and the
    floors and guards on metrics the task reports. A name that is no metric at all is an error."""
    from pipelines.modeling.metrics import primary_metric

    resolved = dict(rules)
    resolved["primary_metric"] = rules.get("primary_metric") or primary_metric(task)
    for key in ("floors", "guards"):
        table = rules.get(key) or {}
        unknown = [name for name in table if name not in GREATER_IS_BETTER]
        if unknown:
            raise ParamsError(f"promote.{key} names unknown metrics: {', '.join(unknown)}")
        resolved[key] = {name: value for name, value in table.items() if name in metrics}
    return resolved


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    baseline: dict[str, float],
    rules: dict[str, Any],
) -> Decision:
    """Promote only if every rule holds; the reasons name each rule that failed (or all passed)."""
    metric = rules["primary_metric"]
    failed: list[str] = []
    passed: list[str] = []

    for name, floor in (rules.get("floors") or {}).items():
        value = challenger.get(name, math.nan)
        ok = improvement(name, value, floor) >= 0
        (passed if ok else failed).append(f"floor {name}: {value:.4f} vs {floor}")

    for name in baseline:
        ok = improvement(name, challenger[name], baseline[name]) > 0
        (passed if ok else failed).append(
            f"baseline {name}: {challenger[name]:.4f} vs trivial {baseline[name]:.4f}"
        )

    if champion is not None:
        delta = improvement(metric, challenger[metric], champion[metric])
        ok = delta >= rules["min_delta"]
        (passed if ok else failed).append(
            f"{metric} {challenger[metric]:.4f} vs champion {champion[metric]:.4f}: "
            f"{delta:+.4f} (needs >= {rules['min_delta']})"
        )
        for name, tolerance in (rules.get("guards") or {}).items():
            change = improvement(name, challenger[name], champion[name])
            ok = change >= -tolerance
            (passed if ok else failed).append(
                f"guard {name}: {challenger[name]:.4f} vs champion {champion[name]:.4f} "
                f"(may worsen by {tolerance})"
            )
    else:
        passed.append("no champion yet: the floors decide")

    return Decision(promote=not failed, reasons=failed or passed)


def decide_fresh(
    challenger: dict[str, float], champion: dict[str, float], metric: str, min_delta: float
) -> Decision:
    """The fresh holdout (the freshest labelled rows): the challenger's primary metric must beat the
    champion's by `min_delta` (retrain.fresh_min_delta). A metric the window cannot give (one class
    only, say) fails: the gate does not pass what it could not check."""
    new, old = challenger.get(metric, math.nan), champion.get(metric, math.nan)
    delta = improvement(metric, new, old)
    ok = delta >= min_delta  # NaN fails
    return Decision(
        promote=ok,
        reasons=[
            f"fresh holdout {metric} {new:.4f} vs champion {old:.4f}: {delta:+.4f} (needs >= {min_delta})"
        ],
    )


def combine(fixed: Decision, fresh: Decision | None) -> Decision:
    """Both holdouts must pass. The reasons are those that decided: every failed rule when the gate
    refuses, every passed one (the fixed holdout's first) when it promotes."""
    if fresh is None:
        return fixed
    if fixed.promote and fresh.promote:
        return Decision(promote=True, reasons=[*fixed.reasons, *fresh.reasons])
    failed = [reason for d in (fixed, fresh) if not d.promote for reason in d.reasons]
    return Decision(promote=False, reasons=failed)
