"""The rollout's current step, read from the prediction log per arm: what `comparison.decide` judges
and what `reports/rollout.json` shows (docs/rollout.md, "Automatic analysis").

The step is the log since `rollout.updated_at` (the step's start), lines of the champion's and the
challenger's versions only. A line's arm is its model version; a line is an *answer* unless its
role is `shadow` (the other arm's answer to the same record, never returned). Per arm:

- requests: the distinct requests the arm answered, plus the ones it failed (the outcome lines'
  `by_role`: `error` and `log_unavailable`; in shadow mode the challenger's are its `shadow`
  scorings and their errors). Outcome windows that overlap the step count whole, so an error near
  the step's start is never missed (at worst one window of the step before is counted too);
- latency: p50, p90, p99 of its answered requests (a request's latency is on each of its lines);
  of its shadow lines apart, which time one model call, not a request;
- agreement: each answered line paired with its shadow line on (request_id, record), the
  champion's answer against the challenger's, whichever answered; a request the shadow queue
  dropped has no pair and is not compared;
- live metrics: with labels (`feedback/`), each arm's lines of the step joined to them (labels.join,
  one arm at a time: both arms' lines of a record share its key), scored as training scores.

In shadow mode the challenger answers no request, so its p99 is reported and not judged
(`judge`); in canary everything is judged. Pure functions over frames; `read_step` is the one reader.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.monitoring import comparison, labels, logs

ARMS = comparison.ARMS
KEY = ["request_id", "record"]
ERROR_KINDS = ("error", "log_unavailable")  # an arm's failures (operations.ERRORS after routing)
SHADOW_ERROR_KINDS = ("error",)  # `dropped` is the shadow queue shedding work, not a model failing
LOG_FIELDS = ("prediction", "probabilities", logs.ROLE)  # logs.iter_frames(only=...)
LATENCY_NOT_JUDGED = (
    "p99 latency: not judged while one arm only scores in shadow: a shadow line's latency is one "
    "model call off the request path, not a request (reported above)."
)


def shadowed_arm(mode: str, share: float = 0.0) -> str | None:
    """The arm that answers nothing in this step, so that its requests are the ones it scored in
    shadow: the challenger in shadow mode, the champion once the canary takes all the traffic (it
    still scores every request in shadow, so the last step can be judged), else None."""
    if mode == "shadow":
        return "challenger"
    if mode == "canary" and share >= 1.0:
        return "champion"
    return None


def since_of(updated_at: str | None) -> pd.Timestamp:
    """The step's start, `rollout.updated_at` (UTC ISO)."""
    if not updated_at:
        raise ValueError("the rollout has no rollout.updated_at: its step's start is unknown")
    stamp = pd.Timestamp(updated_at)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def step_lines(frame: pd.DataFrame, since: pd.Timestamp, versions: Mapping[str, str]) -> pd.DataFrame:
    """The frame's lines of the step: at or after `since`, of the two arms' versions, with `arm`
    (champion, challenger) and `answered` (False for shadow lines)."""
    arm_of = {str(version): arm for arm, version in versions.items()}
    kept = frame[(frame["timestamp"] >= since) & frame["model_version"].astype(str).isin(arm_of)]
    role = kept[logs.ROLE] if logs.ROLE in kept else pd.Series(logs.DEFAULT_ROLE, index=kept.index)
    return kept.assign(
        arm=kept["model_version"].astype(str).map(arm_of), answered=(role != logs.SHADOW).to_numpy()
    )


def collect(frames: Iterable[pd.DataFrame], since: pd.Timestamp, versions: Mapping[str, str]) -> pd.DataFrame:
    """The step's lines of every frame, once each (a file read twice during a rotation counts once)."""
    parts = [step_lines(frame, since, versions) for frame in frames]
    parts = [part for part in parts if len(part)]
    if not parts:
        empty = pd.DataFrame(
            columns=[*KEY, "timestamp", "model_version", "latency_ms", "arm", "answered", "prediction"]
        )
        return empty.astype({"latency_ms": float, "answered": bool})
    return pd.concat(parts, ignore_index=True).drop_duplicates([*KEY, "arm", "answered"], ignore_index=True)


def latencies(lines: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per arm: answered requests and the quantiles of their latency; shadow-scored requests and
    the quantiles of their model call's latency."""
    found = {}
    for arm in ARMS:
        mine = lines[lines["arm"] == arm]
        answered = mine[mine["answered"]].drop_duplicates("request_id")
        shadow = mine[~mine["answered"]].drop_duplicates("request_id")
        found[arm] = {
            "answered": len(answered),
            "latency_ms": comparison.quantiles(answered["latency_ms"].to_numpy(dtype=float)),
            "shadow_scored": len(shadow),
            "shadow_latency_ms": comparison.quantiles(shadow["latency_ms"].to_numpy(dtype=float)),
        }
    return found


def errors(outcomes: pd.DataFrame, since: pd.Timestamp) -> dict[str, int]:
    """Outcome counts by role and kind (`<role>.<kind>`) in the windows that overlap the step."""
    if outcomes.empty:
        return {}
    end = outcomes["window_start"] + pd.to_timedelta(outcomes["window_s"], unit="s")
    step = outcomes[end > since]
    counts = step.groupby(["role", "outcome"])["count"].sum()
    return {f"{role}.{kind}": int(n) for (role, kind), n in counts.items()}


def arm_errors(counts: Mapping[str, int], mode: str, share: float = 0.0) -> dict[str, int]:
    """Each arm's failures: its own role's; the shadowed arm's (`shadowed_arm`) are its shadow scorings'."""

    def total(role: str, kinds: Iterable[str]) -> int:
        return sum(counts.get(f"{role}.{kind}", 0) for kind in kinds)

    shadowed = shadowed_arm(mode, share)
    return {
        arm: total("shadow", SHADOW_ERROR_KINDS) if arm == shadowed else total(arm, ERROR_KINDS)
        for arm in ARMS
    }


def pairs(lines: pd.DataFrame) -> pd.DataFrame:
    """Each answered line beside the other arm's shadow line of the same record: columns suffixed
    `_c` (champion) and `_x` (challenger)."""
    champion, challenger = (lines[lines["arm"] == arm] for arm in ARMS)
    paired = champion.merge(challenger, on=KEY, suffixes=("_c", "_x"))
    return paired[paired["answered_c"] != paired["answered_x"]].reset_index(drop=True)


def agreement_of(lines: pd.DataFrame, tolerance: float | None = None) -> dict[str, Any]:
    """comparison.agreement over the pairs (a classifier: its probability columns), or for a
    regressor numeric_agreement within `tolerance` (None: the differences only, the rate unjudged)."""
    paired = pairs(lines)
    classes = logs.class_columns(lines)
    if classes:
        proba = [
            paired[[f"{logs.PROBABILITIES}{c}_{side}" for c in classes]].fillna(0.0).to_numpy(dtype=float)
            for side in ("c", "x")
        ]
        found = comparison.agreement(
            paired["prediction_c"], paired["prediction_x"], proba[0], proba[1], classes=classes
        )
        if not len(paired):
            found["score_difference"] = comparison.quantiles([])
        return found
    c, x = (pd.to_numeric(paired[f"prediction_{s}"], errors="coerce").to_numpy() for s in ("c", "x"))
    if tolerance is not None:
        return comparison.numeric_agreement(c, x, tolerance)
    return {
        "compared": len(paired),
        "agreed": None,
        "rate": None,
        "score_difference": comparison.quantiles(np.abs(c - x)),
    }


def live(
    lines: pd.DataFrame, found: pd.DataFrame, positive: Any, min_labels: int, examples: int = 5
) -> dict[str, Any]:
    """Per arm, its labelled lines of the step scored (comparison.live_performance_per_arm)."""
    classes = logs.class_columns(lines)
    arms = {}
    for arm in ARMS:
        mine = lines[lines["arm"] == arm].drop(columns=[logs.ROLE], errors="ignore")
        joined = labels.join([mine], found, timedelta(hours=1), examples=examples)
        valid, _ = labels.valid_rows(joined)
        # An arm with no labelled line in this step joins to a frame without its columns.
        wanted = [logs.PROBABILITIES + c for c in classes] if classes else ["prediction"]
        valid = valid.reindex(columns=[*wanted, "label"])
        if classes:
            answers = valid[wanted].fillna(0.0).to_numpy(dtype=float)
        else:
            answers = pd.to_numeric(valid["prediction"], errors="coerce").to_numpy()
        arms[arm] = {"labels": valid["label"].tolist(), "answers": answers}
    if classes and len(classes) == 2 and positive is None:
        return {arm: {"labelled": len(rows["labels"]), "metrics": None} for arm, rows in arms.items()}
    return comparison.live_performance_per_arm(arms, classes or None, positive, min_labels)


def figures(
    lines: pd.DataFrame,
    outcomes: pd.DataFrame,
    since: pd.Timestamp,
    mode: str,
    found_labels: pd.DataFrame | None = None,
    positive: Any = None,
    min_labels: int = 30,
    tolerance: float | None = None,
    share: float = 0.0,
) -> dict[str, Any]:
    """What decide judges (champion, challenger, agreement) and what the report shows beside it.
    `share` is the canary's: at 1.0 the champion answers nothing (`shadowed_arm`)."""
    timing = latencies(lines)
    counts = errors(outcomes, since)
    failed = arm_errors(counts, mode, share)
    shadowed = shadowed_arm(mode, share)
    metrics = (
        live(lines, found_labels, positive, min_labels)
        if found_labels is not None and len(found_labels)
        else {arm: {"labelled": 0, "metrics": None} for arm in ARMS}
    )
    result: dict[str, Any] = {}
    for arm in ARMS:
        own = timing[arm]
        # The shadowed arm answers nothing: its requests are the ones it scored.
        scored = own["shadow_scored"] if arm == shadowed else own["answered"]
        quantile = "shadow_latency_ms" if arm == shadowed else "latency_ms"
        result[arm] = {
            "requests": scored + failed[arm],
            "errors": failed[arm],
            "p99_ms": own[quantile]["p99"],
            "metrics": metrics[arm]["metrics"] or {},
            "labelled": metrics[arm]["labelled"],
            **own,
        }
    result["agreement"] = agreement_of(lines, tolerance)
    result["outcomes"] = counts
    return result


def judge(
    found: Mapping[str, Any], settings: Mapping[str, Any], mode: str, share: float = 0.0
) -> dict[str, Any]:
    """comparison.decide on the step's figures. While one arm only scores in shadow
    (`shadowed_arm`), the p99 check is reported, not judged: decide runs with no latency bound, and
    its latency reason is replaced by one saying so."""
    if shadowed_arm(mode, share) is None:
        return comparison.decide(found, settings)
    decision = comparison.decide(found, {**settings, "max_p99_ratio": math.inf})
    if decision["outcome"] == "inconclusive":
        return decision
    kept = [r for r in decision["reasons"] if not r.startswith("p99 latency")]
    return {**decision, "reasons": kept + ([LATENCY_NOT_JUDGED] if decision["outcome"] == "pass" else [])}


def read_step(
    folder: Path, since: pd.Timestamp, versions: Mapping[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The step's log lines, the outcome counts by role, and the labels, from the service's log folder."""
    frames = logs.iter_frames(folder, only=LOG_FIELDS)
    return collect(frames, since, versions), logs.read_role_outcomes(folder), labels.read_labels(folder)


# --- the report: reports/rollout.json and reports/rollout.html ---


def report(
    state: Mapping[str, Any],
    champion: str,
    found: Mapping[str, Any],
    decision: Mapping[str, Any],
    settings: Mapping[str, Any],
    at: str,
) -> dict[str, Any]:
    """The analysis as plain JSON: the state analysed, the figures per arm, agreement (rate,
    score-difference quantiles, the per-class matrix), the decision and its reasons."""
    arm_keys = (
        "requests",
        "errors",
        "answered",
        "shadow_scored",
        "latency_ms",
        "shadow_latency_ms",
        "labelled",
        "metrics",
    )
    arms = {arm: {k: found[arm][k] for k in arm_keys} for arm in ARMS}
    for arm in ARMS:
        total = arms[arm]["requests"]
        arms[arm]["error_rate"] = arms[arm]["errors"] / total if total else None
    return json.loads(
        json.dumps(
            {
                "generated_at": at,
                "rollout": dict(state),
                "versions": {"champion": champion, "challenger": state.get("challenger")},
                "arms": arms,
                "agreement": found["agreement"],
                "outcomes": found["outcomes"],
                "decision": dict(decision),
                "settings": {
                    k: v for k, v in settings.items() if not isinstance(v, float) or math.isfinite(v)
                },
            },
            default=_plain,
        )
    )


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating):
        return value.item()
    return str(value)


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(head: list[str], rows: list[list[Any]]) -> str:
    top = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{top}</tr>{body}</table>"


def _figure(found: Mapping[str, Any]) -> str:
    """Latency per arm as a PNG data URI (no CDN), or nothing when no arm has a latency."""
    from pipelines.modeling.plots import plt

    names = [(arm, key) for arm in ARMS for key in ("latency_ms", "shadow_latency_ms")]
    names = [(arm, key) for arm, key in names if found["arms"][arm][key]["p99"] is not None]
    if not names:
        return ""
    fig, ax = plt.subplots(figsize=(6, 2.6))
    for index, quantile in enumerate(("p50", "p90", "p99")):
        values = [found["arms"][arm][key][quantile] for arm, key in names]
        ax.bar(np.arange(len(names)) + index * 0.27, values, width=0.27, label=quantile)
    ax.set_xticks(
        np.arange(len(names)) + 0.27, [f"{a}\n{'shadow' if 'shadow' in k else 'answered'}" for a, k in names]
    )
    ax.set(ylabel="ms", title="latency per arm")
    ax.legend()
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return f'<img alt="latency per arm" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def render_html(found: Mapping[str, Any]) -> str:
    """reports/rollout.html: self-contained (inline style, the figure as a data URI)."""
    state, decision, agreed = found["rollout"], found["decision"], found["agreement"]
    arms = found["arms"]
    rows = [
        [
            arm,
            found["versions"][arm],
            arms[arm]["requests"],
            arms[arm]["errors"],
            arms[arm]["error_rate"],
            *(arms[arm]["latency_ms"][q] for q in ("p50", "p90", "p99")),
            *(arms[arm]["shadow_latency_ms"][q] for q in ("p50", "p90", "p99")),
            arms[arm]["labelled"],
        ]
        for arm in ARMS
    ]
    head = ["arm", "version", "requests", "errors", "error rate", "p50 ms", "p90 ms", "p99 ms"]
    head += ["shadow p50 ms", "shadow p90 ms", "shadow p99 ms", "labelled"]
    metrics = sorted({m for arm in ARMS for m in (arms[arm]["metrics"] or {})})
    live_rows = [[m, *((arms[arm]["metrics"] or {}).get(m) for arm in ARMS)] for m in metrics]
    matrix = agreed.get("matrix") or {}
    classes = list(matrix)
    matrix_rows = [[c, *(matrix[c][x] for x in classes)] for c in classes]
    diff = agreed.get("score_difference") or {}
    parts = [
        f"<h1>Rollout analysis: {html.escape(decision['outcome'].upper())}</h1>",
        f"<p>{html.escape(found['generated_at'])}: challenger v{_cell(found['versions']['challenger'])} "
        f"against champion v{_cell(found['versions']['champion'])}, mode {_cell(state.get('mode'))}, "
        f"share {_cell(state.get('share'))}, step {_cell(state.get('step'))}, since {_cell(state.get('updated_at'))}.</p>",
        "<h2>Decision</h2><ul>"
        + "".join(f"<li>{html.escape(r)}</li>" for r in decision["reasons"])
        + "</ul>",
        "<h2>Arms</h2>" + _table(head, rows),
        _figure(found),
        f"<h2>Agreement</h2><p>rate {_cell(agreed.get('rate'))} over {_cell(agreed.get('compared'))} compared answers</p>",
        "<h3>Score differences (|champion - challenger|)</h3>"
        + _table(["p50", "p90", "p99", "max"], [[diff.get(q) for q in ("p50", "p90", "p99", "max")]]),
    ]
    if classes:
        parts.append(
            "<h3>Per-class matrix (rows: champion, columns: challenger; off the diagonal: disagreements)</h3>"
            + _table(["champion \\ challenger", *classes], matrix_rows)
        )
    parts.append(
        "<h2>Live metrics</h2>"
        + (_table(["metric", *ARMS], live_rows) if live_rows else "<p>no labels yet</p>")
    )
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #999;padding:3px 8px}"
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Rollout analysis</title><style>{style}</style>'
        f"</head><body>{''.join(parts)}</body></html>\n"
    )
