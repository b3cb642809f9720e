"""Where `make retrain`'s new labelled rows come from: a table (IN=file), or the service's own log.

From the log, a row is an answered prediction's inputs with the label posted for it to /feedback
(or `make feedback`), joined on (request_id, record) by the monitor's own rules: the first label
received for a key wins (pipelines/monitoring/labels.py). Only answered lines count, those whose
role is champion or challenger (a line without a role is the champion's); a shadow line scored the
same record off the request path, and is never a second example of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pipelines.core import files
from pipelines.core.errors import DataError
from pipelines.monitoring import labels as label_log
from pipelines.monitoring import logs
from pipelines.monitoring.errors import MonitorError

ANSWERED = ("champion", "challenger")


def from_file(source: str) -> pd.DataFrame:
    """A CSV or Parquet table with the source's columns, the target among them, freshest rows last."""
    if not Path(source).is_file():
        raise DataError(f"{source} does not exist")
    return files.read_table(source)


def answered(frame: pd.DataFrame) -> pd.DataFrame:
    """The lines that answered a request (no role: an older log's line, the champion's)."""
    if "role" not in frame.columns:
        return frame
    return frame[frame["role"].isna() | frame["role"].isin(ANSWERED)]


def labelled_inputs(
    frames: list[pd.DataFrame] | object, labels: pd.DataFrame, target: str, ids: list[str]
) -> pd.DataFrame:
    """Each labelled answered record's inputs and its label as `target`, oldest prediction first.
    An id column the caller did not send gets the record's key `request_id#record`: ids are never
    features, and the key names where the row came from."""
    unique, _ = label_log.first_labels(labels, examples=0)
    keyed = unique[[*label_log.KEY, "label"]]
    parts = [answered(frame).merge(keyed, on=label_log.KEY, how="inner") for frame in frames]  # type: ignore[attr-defined]
    parts = [part for part in parts if len(part)]
    if not parts:
        return pd.DataFrame()
    rows = pd.concat(parts, ignore_index=True).drop_duplicates(label_log.KEY)
    rows = rows.sort_values(["timestamp", "request_id", "record"], kind="stable")
    inputs = {name: rows[logs.INPUTS + name] for name in logs.input_columns(rows)}
    table = pd.DataFrame(inputs)
    for name in ids:
        key = rows["request_id"].astype(str) + "#" + rows["record"].astype(str)
        table[name] = table[name].fillna(key) if name in table else key
    table[target] = rows["label"].to_numpy()
    return table.reset_index(drop=True)


def from_log(log_dir: Path, target: str, ids: list[str]) -> pd.DataFrame:
    """Every labelled answered record in the prediction log under `log_dir`."""
    try:
        found = label_log.read_labels(log_dir)
        if not len(found):
            raise DataError(f"no labels in {log_dir / 'feedback'}: post them to /feedback or `make feedback`")
        return labelled_inputs(logs.iter_frames(log_dir), found, target, ids)
    except MonitorError as exc:
        raise DataError(str(exc)) from None


def log_dir(root: Path) -> Path:
    """The service's log folder, as `make feedback` and the service find it."""
    from pipelines.serving.feedback import log_dir as service_log_dir

    return root / service_log_dir(os.environ)
