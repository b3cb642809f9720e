"""`make feedback IN=labels.csv`: ground-truth labels in bulk, beside the prediction log.

IN is a CSV, TSV or Parquet table (text may be compressed, as for batch scoring) with exactly
the columns request_id, record and label. Each row is judged by the rule `POST /feedback`
applies (`serving.feedback.label_problem`), against the packaged champion's task and classes.

All or nothing: the whole file is checked first, and the first bad row stops the run with one
line naming its row (1-based, the header not counted) and column; nothing is appended then.
A valid file is appended to `$PREDICTION_LOG_DIR/feedback/labels.bulk.jsonl` (default folder
`monitoring/`) with source "bulk", chunk by chunk, each chunk whole and synced. A run cut short
can simply be run again: the monitor's join keeps one label per (request_id, record).

    python -m pipelines feedback IN
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.batch import tables
from pipelines.core.errors import DataError, PipelineError
from pipelines.serving import feedback

COLUMNS = ("request_id", "record", "label")
WRITER = "bulk"


def check_columns(found: list[str]) -> None:
    """Exactly the three columns, in any order; others are named by position, never by name."""
    missing = [c for c in COLUMNS if c not in found]
    if missing:
        raise DataError(f"the labels file lacks columns: {', '.join(missing)} (needs {', '.join(COLUMNS)})")
    unknown = [str(i + 1) for i, c in enumerate(found) if c not in COLUMNS]
    if unknown:
        raise DataError(
            f"the labels file has other columns: column {', '.join(unknown)} of {len(found)} "
            f"(expected only {', '.join(COLUMNS)})"
        )


def _cell(value: Any) -> Any:
    """A cell as a JSON value would carry it: numpy scalars as Python ones, a missing cell as None."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def text_labels(column: pd.Series, target: feedback.Target) -> pd.Series:
    """A CSV label column as values: the classes' own type. String classes keep the cell's text
    ("1" stays "1"); numeric or boolean ones read the cell as a JSON literal (`1`, `1.5`, `true`)."""
    if target.task == "classification" and all(isinstance(c, str) for c in target.classes):
        return column.astype(object).where(column.notna(), None)
    return tables.literal_values(column.astype(object))


def rows_of(frame: pd.DataFrame, fmt: tables.Format, target: feedback.Target) -> list[dict[str, Any]]:
    """One chunk as label dicts, each cell typed as the API would receive it."""
    if fmt.kind == "text":
        frame = frame.assign(
            request_id=frame["request_id"].astype(object).where(frame["request_id"].notna(), None),
            record=tables.literal_values(frame["record"].astype(object)),
            label=text_labels(frame["label"], target),
        )
    return [
        {key: _cell(value) for key, value in zip(COLUMNS, values, strict=True)}
        for values in frame[list(COLUMNS)].itertuples(index=False, name=None)
    ]


def labelled_chunks(
    source: str, fmt: tables.Format, target: feedback.Target, rows: int
) -> Iterator[list[dict]]:
    """The file's labels, chunk by chunk, each checked: a bad row is a DataError naming it."""
    seen = 0
    for frame in tables.chunks(source, fmt, rows):
        labels = rows_of(frame, fmt, target)
        for index, item in enumerate(labels):
            found = feedback.label_problem(target, item["request_id"], item["record"], item["label"])
            if found is not None:
                raise DataError(f"row {seen + index + 1}, column {found[0]}: {found[1]}")
        seen += len(labels)
        yield labels


def check_source(source: str) -> tables.Format:
    """IN's name, existence and columns, before anything is loaded."""
    fmt = tables.table_format(source)
    if not Path(source).is_file():
        raise DataError(
            f"'{source}' does not exist" if not Path(source).exists() else f"'{source}' is not a file"
        )
    check_columns(tables.columns(source, fmt))
    return fmt


def ingest(source: str, folder: Path, target: feedback.Target, chunk_rows: int) -> tuple[int, Path]:
    """Check all of `source`, then append it. (labels appended, the file they went to)."""
    fmt = check_source(source)
    total = sum(len(labels) for labels in labelled_chunks(source, fmt, target, chunk_rows))
    if total == 0:
        raise DataError(f"'{source}' has no labels")
    log = feedback.FeedbackLog(folder, WRITER)
    try:
        for labels in labelled_chunks(source, fmt, target, chunk_rows):
            log.append(feedback.encode(labels, "bulk"))
    except feedback.FeedbackUnavailable as exc:
        raise PipelineError(str(exc)) from None
    return total, log.path


def champion_target(root: Path, params: dict) -> feedback.Target:
    """The packaged champion's task and classes, as the service that answered has them."""
    from pipelines.batch import scoring
    from pipelines.serving import bundle, trust

    path = scoring.champion_path(root, params)
    try:
        loaded = bundle.load(path, threads=1)
    except trust.Untrusted as exc:
        raise PipelineError(str(exc)) from None
    return feedback.Target.of(loaded.task, loaded.classes, loaded.meta["limits"]["max_records"])
