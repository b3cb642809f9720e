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
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
from sklearn.exceptions import UndefinedMetricWarning

from pipelines.modeling.metrics import classification_scores, regression_scores
from pipelines.monitoring.errors import MonitorError
from pipelines.monitoring.logs import PROBABILITIES, log_roots

LABEL_FILE = re.compile(r"labels\.[A-Za-z0-9_-]{1,64}\.jsonl")
SOURCES = ("api", "bulk")
KEY = ["request_id", "record"]
COLUMNS = (*KEY, "label", "received_at", "source")  # a label line's fields, in read_labels' frame
# The fields json.loads would give as strings; a number or boolean there fails the parse.
_PARSE = pj.ParseOptions(
    explicit_schema=pa.schema([(name, pa.string()) for name in ("request_id", "received_at", "source")]),
    unexpected_field_behavior="infer",
)
LOG_FIELDS = ("prediction", "probabilities")  # logs.iter_frames(only=...): what the join reads
CAVEAT = (
    "label-free estimate: the mean of each prediction's highest class probability. It follows "
    "accuracy when the inputs shift but the model stays calibrated; it is blind when the relation "
    "between inputs and label changes, so the labelled figures win wherever they exist."
)


def read_labels(root: str | Path) -> pd.DataFrame:
    """Every label line of every writer, validated. No feedback folder means no labels yet (an
    empty frame); a line that breaks the format raises MonitorError naming file and line."""
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    # A fleet's replicas each keep the labels sent to them (logs.log_roots): all are read together.
    folders = [folder / "feedback" for _, folder in log_roots(root)]
    for folder in (f for f in folders if f.is_dir()):
        for path in sorted(folder.iterdir()):
            if LABEL_FILE.fullmatch(path.name):
                for name, values in _label_columns(path).items():
                    columns[name].extend(values)
    # An empty dict of lists would make float columns; the empty frame of the row-wise reader is object.
    frame = pd.DataFrame(columns if columns["record"] else None, columns=list(COLUMNS))
    frame["received_at"] = pd.to_datetime(frame["received_at"], utc=True, format="ISO8601")
    return frame.astype({"record": "int64", "label": "object"})


def _label_columns(path: Path) -> dict[str, list[Any]]:
    """One file's labels by column: parsed whole by pyarrow when every line is certainly valid
    (10x faster than json.loads per line), else line by line, which names the first bad line."""
    parsed = _parsed(path.read_bytes())
    if parsed is not None:
        return parsed
    rows = list(_label_lines(path))
    return {name: [row[name] for row in rows] for name in COLUMNS}


def _parsed(data: bytes) -> dict[str, list[Any]] | None:
    """The columns of a label file if each line passes label_problem, checked column-wise; None
    when any line might not (the caller then reads line by line). Every check errs towards None."""
    # json.loads takes one value per line; pyarrow also splits at a lone \r and reads two objects
    # on one line, so the row count must equal the count of non-blank lines.
    lines = sum(1 for line in data.split(b"\n") if line.strip())
    if not lines:
        return {name: [] for name in COLUMNS}
    try:
        table = pj.read_json(pa.py_buffer(data), parse_options=_PARSE)
    except pa.ArrowInvalid:  # not JSON, not objects, a key twice, types that change, ...
        return None
    if table.num_rows != lines or any(n not in table.column_names or table[n].null_count for n in COLUMNS):
        return None
    request_id, record, label, received_at, source = (table[name] for name in COLUMNS)
    # A JSON number with a fraction or exponent is a double here, and json.loads makes it a float:
    # such a record is refused and such a label's class differs (1.0 is not class "1"), so read
    # those files line by line. Strings, integers and booleans convert exactly.
    if record.type != pa.int64() or label.type not in (pa.string(), pa.int64(), pa.bool_()):
        return None
    if pc.min(pc.utf8_length(request_id)).as_py() < 1 or pc.min(record).as_py() < 0:
        return None
    if not pc.all(pc.is_in(source, value_set=pa.array(SOURCES))).as_py():
        return None
    stamps = received_at.to_pylist()
    try:
        if any(datetime.fromisoformat(stamp).tzinfo is None for stamp in stamps):
            return None
    except ValueError:
        return None
    return {name: table[name].to_pylist() if name != "received_at" else stamps for name in COLUMNS}


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


def _keys(frame: pd.DataFrame, examples: int) -> list[str]:
    """Up to `examples` keys, as `request_id#record` (ids the service gave, never values)."""
    head = frame.head(examples)
    return [f"{rid}#{rec}" for rid, rec in zip(head["request_id"], head["record"], strict=True)]


def _identity(value: Any) -> str:
    """A label's identity as a string: its JSON value, so 1, 1.0 and true agree and 1 and "1" do not
    (as Python's == has them), for a vectorised comparison. A string is "s" + itself."""
    if isinstance(value, str):
        return "s" + value
    if isinstance(value, bool | np.bool_):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # exact: a float equals an int only if it is integral
    return "n" + str(value)


def first_labels(labels: pd.DataFrame, examples: int) -> tuple[pd.DataFrame, LabelReport]:
    """One label per key, the first received (file order breaks ties), and the counts, with up
    to `examples` example keys per problem (`monitor.examples`)."""
    ordered = labels.sort_values("received_at", kind="stable")
    # Keys and label identities as dense integer codes (each below the line count n, so a pair
    # below n * n: no overflow under 3e9 lines), so numpy counts them.
    id_code, _ = pd.factorize(ordered["request_id"])
    record_code, records = pd.factorize(ordered["record"])
    key, _ = pd.factorize(id_code.astype(np.int64) * len(records) + record_code)
    # The str test inline is _identity's first case, without a call per label.
    identities = [("s" + value) if value.__class__ is str else _identity(value) for value in ordered["label"]]
    label_code, distinct_labels = pd.factorize(np.array(identities, dtype=object))
    width = max(len(distinct_labels), 1)
    pairs = np.unique(key.astype(np.int64) * width + label_code)
    labelled_keys, labels_per_key = np.unique(pairs // width, return_counts=True)
    repeated = pd.Series(key).duplicated().to_numpy()
    first = ordered[~repeated]
    conflicts = first[np.isin(key[~repeated], labelled_keys[labels_per_key > 1])]
    report = LabelReport(
        lines=len(labels),
        keys=len(first),
        resubmitted=len(ordered) - len(pairs),
        conflicting=len(conflicts),
        conflict_examples=_keys(conflicts.sort_values(KEY), examples),
    )
    return first.reset_index(drop=True), report


@dataclass
class Joined:
    """Labelled predictions, and every prediction's count and confidence per window and version."""

    rows: pd.DataFrame
    windows: pd.DataFrame  # index (window_start, model_version); predictions, confidence_sum
    report: LabelReport
    classes: list[str]
    examples: int  # example keys per problem


def join(frames: Iterable[pd.DataFrame], labels: pd.DataFrame, window: timedelta, *, examples: int) -> Joined:
    """Streams the log once: each frame's labelled records are kept, the rest only counted, so
    memory grows with the labels, not the log. `labels` are read_labels' lines."""
    unique, report = first_labels(labels, examples)
    find = _Finder(unique)
    seen = np.zeros(len(unique), dtype=bool)
    totals: dict[tuple[Any, Any], list[float]] = {}
    parts: list[pd.DataFrame] = []
    classes: list[str] = []
    for frame in frames:
        probability = [name for name in frame.columns if name.startswith(PROBABILITIES)]
        classes = classes or [name.removeprefix(PROBABILITIES) for name in probability]
        start = frame["timestamp"].dt.floor(window)
        _count(totals, start, frame["model_version"], _confidence(frame, probability))
        position = find(frame["request_id"], frame["record"])
        hit = position >= 0
        if hit.any():
            seen[position[hit]] = True
            part = frame.iloc[np.flatnonzero(hit)][
                [*KEY, "timestamp", "model_version", "prediction", *probability]
            ]
            parts.append(part.assign(window_start=start[hit], _label=position[hit]))
    rows = _labelled(parts, unique)
    unknown = unique[~seen]
    report.unknown, report.unknown_examples = len(unknown), _keys(unknown, examples)
    return Joined(rows, _windows(totals), report, classes, examples)


class _Finder:
    """Each log row's position among the unique labels (-1 for none), in a few numpy calls per frame.
    A key becomes one integer: its request id's number among the labelled ids times the count of
    distinct labelled records, plus its record's rank among them (below n * n for n labels, so
    no overflow). Python touches only a frame's distinct request ids, a tenth of its rows in the
    bench. pyarrow's index_in (which rebuilds its table of the labels every call), pandas'
    get_indexer and a dict lookup per `request_id#record` string were each slower."""

    def __init__(self, unique: pd.DataFrame) -> None:
        id_code, ids = pd.factorize(unique["request_id"])
        self.ids = {request_id: n for n, request_id in enumerate(ids.tolist())}
        self.records = np.unique(unique["record"].to_numpy(dtype=np.int64))
        rank = np.searchsorted(self.records, unique["record"].to_numpy(dtype=np.int64))
        keys = id_code.astype(np.int64) * len(self.records) + rank
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]

    def __call__(self, request_id: pd.Series, record: pd.Series) -> np.ndarray:
        position = np.full(len(request_id), -1, dtype=np.int64)
        if not len(self.keys) or not len(request_id):
            return position
        code, ids = pd.factorize(request_id)
        # -1 (a missing id) indexes the sentinel at the end.
        id_code = np.array([*map(self.ids.get, ids.tolist(), [-1] * len(ids)), -1], dtype=np.int64)[code]
        values = record.to_numpy(dtype=np.int64)
        rank = np.searchsorted(self.records, values).clip(max=len(self.records) - 1)
        candidate = (id_code >= 0) & (self.records[rank] == values)
        keys = id_code[candidate] * len(self.records) + rank[candidate]
        at = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
        found = self.keys[at] == keys
        position[np.flatnonzero(candidate)[found]] = self.order[at[found]]
        return position


def _confidence(frame: pd.DataFrame, probability: list[str]) -> np.ndarray:
    """Each prediction's highest class probability (NaN where it has none), as DataFrame.max."""
    if not probability:
        return np.full(len(frame), np.nan)
    return np.fmax.reduce(frame[probability].to_numpy(dtype=float), axis=1)


def _count(
    totals: dict[tuple[Any, Any], list[float]], start: pd.Series, version: pd.Series, confidence: np.ndarray
) -> None:
    """Adds one frame's predictions and confidence sums per (window start, version) to `totals`:
    bincount over factorized keys, as a groupby would, at a fraction of its cost per frame."""
    start_code, starts = pd.factorize(start)
    version_code, versions = pd.factorize(version)
    ok = (start_code >= 0) & (version_code >= 0)  # groupby drops missing keys
    group = start_code[ok] * len(versions) + version_code[ok]
    size = len(starts) * len(versions)
    counts = np.bincount(group, minlength=size)
    sums = np.bincount(group, weights=np.nan_to_num(confidence[ok], nan=0.0), minlength=size)
    for index in np.flatnonzero(counts):
        total = totals.setdefault((starts[index // len(versions)], versions[index % len(versions)]), [0, 0.0])
        total[0] += int(counts[index])
        total[1] += float(sums[index])


def _windows(totals: dict[tuple[Any, Any], list[float]]) -> pd.DataFrame:
    if not totals:
        return pd.DataFrame()
    keys = sorted(totals)
    index = pd.MultiIndex.from_tuples(keys, names=["window_start", "model_version"])
    frame = pd.DataFrame(
        [totals[key] for key in keys], index=index, columns=["predictions", "confidence_sum"]
    )
    return frame.astype({"predictions": "int64", "confidence_sum": "float64"})


def _labelled(parts: list[pd.DataFrame], unique: pd.DataFrame) -> pd.DataFrame:
    """The labelled rows, each with its label; a file read twice (a rotation racing the reader)
    counts once."""
    if not parts:
        empty = pd.DataFrame(columns=[*KEY, "model_version", "prediction", "window_start"])
        return empty.merge(unique[[*KEY, "label"]], on=KEY, how="left")
    rows = pd.concat(parts, ignore_index=True).drop_duplicates(KEY)
    label = unique["label"].to_numpy(dtype=object)[rows.pop("_label").to_numpy()]
    return rows.assign(label=label).reset_index(drop=True)


def class_key(value: Any) -> str:
    """A label as the prediction log names its class: the log's probabilities are a JSON object,
    so a class is its JSON key (`true` for a boolean True, `1` for the integer 1)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def valid_rows(joined: Joined) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The joined rows whose label the model could have predicted (labels as the log names the
    classes), and the others."""
    rows = joined.rows
    if joined.classes:
        label = rows["label"].map(class_key)
        ok = label.isin(joined.classes)
        rows = rows.assign(label=label)
    else:
        ok = rows["label"].map(lambda value: isinstance(value, int | float) and not isinstance(value, bool))
    return rows[ok], rows[~ok]


def _valid(joined: Joined) -> pd.DataFrame:
    """valid_rows, with the others counted in the join's report."""
    valid, invalid = valid_rows(joined)
    report = joined.report
    report.invalid, report.invalid_examples = len(invalid), _keys(invalid, joined.examples)
    report.joined = len(valid)
    return valid


def window_scores(rows: pd.DataFrame, classes: list[str], positive: Any) -> dict[str, float | None]:
    """The training metrics (pipelines.modeling.metrics) on one window's labelled rows. A metric
    a window cannot define (roc_auc with one class present) is None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if classes:
            proba = rows[[PROBABILITIES + c for c in classes]].to_numpy(dtype=float)
            # Fixed-width strings, not objects: sklearn's np.unique sorts them 10x faster.
            scores = classification_scores(
                rows["label"].to_numpy(dtype=str),
                proba,
                np.array(classes, dtype=str),
                None if positive is None else str(positive),
            )
        else:
            scores = regression_scores(rows["label"].astype(float), rows["prediction"].to_numpy(dtype=float))
    return {name: (value if math.isfinite(value) else None) for name, value in scores.items()}


def live_performance(joined: Joined, positive: Any, min_labels: int) -> dict[str, Any]:
    """Per prediction-time window and model version: predictions, labelled rows, label coverage,
    the training metrics (None below `min_labels`), and for classification the label-free estimate."""
    rows = _valid(joined)
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
