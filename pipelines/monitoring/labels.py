"""Ground-truth labels (`feedback/labels.<writer>.jsonl`), joined to the logged predictions once, and
live performance by prediction time beside the label-free estimate.

The join's rules:
- the key is (request_id, record): the answer's id and the record's index in that request;
- a resubmitted identical label changes nothing; it is counted as `resubmitted`;
- a conflicting label for a key is counted (with example keys) and the **first received wins**:
  a figure already reported from it does not change behind the reader's back, and correcting a
  label is then an explicit act (fix the file) rather than a race between two senders;
- a label whose key is in no logged prediction is counted as `unknown` (a typo, or a prediction
  pruned from the log), and a label that is not one of the model's classes as `invalid`.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import UndefinedMetricWarning

from pipelines.modeling.metrics import classification_scores, regression_scores
from pipelines.monitoring.errors import MonitorError
from pipelines.monitoring.logs import PROBABILITIES

LABEL_FILE = re.compile(r"labels\.[A-Za-z0-9_-]{1,64}\.jsonl")
SOURCES = ("api", "bulk")
KEY = ["request_id", "record"]
LOG_FIELDS = ("prediction", "probabilities")  # logs.iter_frames(only=...): what the join reads
EXAMPLES = 5  # example keys given for each kind of problem
CAVEAT = (
    "label-free estimate: the mean of each prediction's highest class probability. It follows "
    "accuracy when the inputs shift but the model stays calibrated; it is blind when the relation "
    "between inputs and label changes, so the labelled figures win wherever they exist."
)


def read_labels(root: str | Path) -> pd.DataFrame:
    """Every label line of every writer, validated. No feedback folder means no labels yet (an
    empty frame); a line that breaks the format raises MonitorError naming file and line."""
    folder = Path(root) / "feedback"
    rows: list[dict[str, Any]] = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if LABEL_FILE.fullmatch(path.name):
                rows.extend(_label_lines(path))
    frame = pd.DataFrame(rows, columns=[*KEY, "label", "received_at", "source"])
    frame["received_at"] = pd.to_datetime(frame["received_at"], utc=True, format="ISO8601")
    return frame.astype({"record": "int64", "label": "object"})


def _label_lines(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            problem = label_problem(entry)
            if problem:
                raise MonitorError(f"{path.parent.name}/{path.name}: line {number} {problem}")
            yield entry


def label_problem(entry: Any) -> str | None:
    """What is wrong with one parsed label line, in words that never quote it; None if it is valid."""
    if not isinstance(entry, dict):
        return "is not a JSON object"
    request_id, record, label = entry.get("request_id"), entry.get("record"), entry.get("label")
    if not (isinstance(request_id, str) and request_id):
        return "has no request_id string"
    if not (isinstance(record, int) and not isinstance(record, bool) and record >= 0):
        return "has no record index (an integer, 0 or more)"
    # A boolean is a label when the model's classes are booleans (the feedback endpoint takes
    # them then); the join below checks each label against the classes the log names.
    if not isinstance(label, str | int | float):
        return "has no label (a class name or a number)"
    if isinstance(label, float) and not math.isfinite(label):
        return "has a label that is not a finite number"
    if entry.get("source") not in SOURCES:
        return f"has no source ({' or '.join(SOURCES)})"
    try:
        received = datetime.fromisoformat(str(entry.get("received_at")))
    except ValueError:
        return "has no received_at time (ISO 8601)"
    if received.tzinfo is None:
        return "has a received_at time without a time zone"
    return None


@dataclass
class LabelReport:
    """What the join made of the label lines; each count is of keys unless it says lines."""

    lines: int = 0
    keys: int = 0
    resubmitted: int = 0  # lines that repeat the label their key already had
    conflicting: int = 0  # keys that received two different labels (the first one counts)
    conflict_examples: list[str] = field(default_factory=list)
    unknown: int = 0  # keys in no logged prediction
    unknown_examples: list[str] = field(default_factory=list)
    invalid: int = 0  # keys whose label is not one of the model's classes (or not a number)
    invalid_examples: list[str] = field(default_factory=list)
    joined: int = 0


def _keys(frame: pd.DataFrame) -> list[str]:
    return [f"{rid}#{rec}" for rid, rec in zip(frame["request_id"], frame["record"], strict=True)][:EXAMPLES]


def first_labels(labels: pd.DataFrame) -> tuple[pd.DataFrame, LabelReport]:
    """One label per key, the first received (file order breaks ties), and the counts."""
    ordered = labels.sort_values("received_at", kind="stable")
    # A label's identity for comparison: its JSON value, so 1 and 1.0 agree and 1 and "1" do not.
    identity = ordered["label"].map(lambda value: (isinstance(value, str), value))
    distinct = identity.groupby([ordered["request_id"], ordered["record"]]).nunique()
    conflicts = distinct[distinct > 1].reset_index()
    first = ordered.drop_duplicates(KEY, keep="first")
    report = LabelReport(
        lines=len(labels),
        keys=len(first),
        resubmitted=int(len(ordered) - len(ordered.assign(_i=identity).drop_duplicates([*KEY, "_i"]))),
        conflicting=len(conflicts),
        conflict_examples=_keys(conflicts),
    )
    return first.reset_index(drop=True), report


@dataclass
class Joined:
    """Labelled predictions, and every prediction's count and confidence per window and version."""

    rows: pd.DataFrame
    windows: pd.DataFrame  # index (window_start, model_version); predictions, confidence_sum
    report: LabelReport
    classes: list[str]


def join(frames: Iterable[pd.DataFrame], labels: pd.DataFrame, window: timedelta) -> Joined:
    """Streams the log once: each frame's labelled records are kept, the rest only counted, so
    memory grows with the labels, not the log. `labels` are read_labels' lines."""
    unique, report = first_labels(labels)
    keyed = unique.set_index(KEY)["label"]
    parts: list[pd.DataFrame] = []
    counts: list[pd.DataFrame] = []
    classes: list[str] = []
    for frame in frames:
        probability = [name for name in frame.columns if name.startswith(PROBABILITIES)]
        classes = classes or [name.removeprefix(PROBABILITIES) for name in probability]
        start = frame["timestamp"].dt.floor(window)
        confidence = frame[probability].max(axis=1) if probability else pd.Series(np.nan, index=frame.index)
        counts.append(
            pd.DataFrame({"window_start": start, "model_version": frame["model_version"], "c": confidence})
            .groupby(["window_start", "model_version"])["c"]
            .agg(predictions="size", confidence_sum="sum")
        )
        hit = pd.MultiIndex.from_arrays([frame["request_id"], frame["record"]]).isin(keyed.index)
        if hit.any():
            part = frame.loc[hit, [*KEY, "timestamp", "model_version", "prediction", *probability]]
            parts.append(part.assign(window_start=start[hit]))
    rows = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=[*KEY, "model_version", "prediction", "window_start"])
    )
    rows = rows.drop_duplicates(KEY)  # a file read twice (a rotation racing the reader) counts once
    rows = rows.merge(unique[[*KEY, "label"]], on=KEY, how="left")
    unknown = unique.merge(rows[KEY], on=KEY, how="left", indicator=True)
    unknown = unknown[unknown["_merge"] == "left_only"]
    report.unknown, report.unknown_examples = len(unknown), _keys(unknown)
    windows = pd.concat(counts).groupby(level=[0, 1]).sum() if counts else pd.DataFrame()
    return Joined(rows, windows, report, classes)


def class_key(value: Any) -> str:
    """A label as the prediction log names its class: the log's probabilities are a JSON object,
    so a class is its JSON key (`true` for a boolean True, `1` for the integer 1)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _valid(rows: pd.DataFrame, classes: list[str], report: LabelReport) -> pd.DataFrame:
    """The joined rows whose label the model could have predicted; the others are counted."""
    if classes:
        label = rows["label"].map(class_key)
        ok = label.isin(classes)
        rows = rows.assign(label=label)
    else:
        ok = rows["label"].map(lambda value: isinstance(value, int | float) and not isinstance(value, bool))
    report.invalid, report.invalid_examples = int((~ok).sum()), _keys(rows[~ok])
    report.joined = int(ok.sum())
    return rows[ok]


def window_scores(rows: pd.DataFrame, classes: list[str], positive: Any) -> dict[str, float | None]:
    """The training metrics (pipelines.modeling.metrics) on one window's labelled rows. A metric
    a window cannot define (roc_auc with one class present) is None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if classes:
            proba = rows[[PROBABILITIES + c for c in classes]].to_numpy(dtype=float)
            scores = classification_scores(
                rows["label"],
                proba,
                np.array(classes, dtype=object),
                None if positive is None else str(positive),
            )
        else:
            scores = regression_scores(rows["label"].astype(float), rows["prediction"].to_numpy(dtype=float))
    return {name: (value if math.isfinite(value) else None) for name, value in scores.items()}


def live_performance(joined: Joined, positive: Any, min_labels: int) -> dict[str, Any]:
    """Per prediction-time window and model version: predictions, labelled rows, label coverage,
    the training metrics (None below `min_labels`), and for classification the label-free estimate."""
    rows = _valid(joined.rows, joined.classes, joined.report)
    groups = dict(iter(rows.groupby(["window_start", "model_version"], sort=False)))
    windows = []
    for (start, version), totals in joined.windows.iterrows():
        labelled = groups.get((start, version), rows.iloc[:0])
        enough = len(labelled) >= min_labels
        entry: dict[str, Any] = {
            "window_start": pd.Timestamp(start).isoformat(),
            "model_version": str(version),
            "predictions": int(totals["predictions"]),
            "labeled": len(labelled),
            "label_coverage": len(labelled) / int(totals["predictions"]),
            "status": "ok" if enough else "insufficient_labels",
            "metrics": window_scores(labelled, joined.classes, positive) if enough else None,
        }
        if joined.classes:
            entry["estimated_accuracy"] = float(totals["confidence_sum"]) / int(totals["predictions"])
        windows.append(entry)
    result: dict[str, Any] = {"windows": windows, "labels": vars(joined.report)}
    if joined.classes:
        result["estimate_caveat"] = CAVEAT
    return result
