"""New labelled rows (`make retrain`): the DVC-tracked batches, their order, and the fresh holdout.

`paths.labelled_batches` is a folder of Parquet batches, one per retrain, named by their UTC stamp so that
name order is time order; within a batch, rows are oldest first. Each batch is tracked by its own
`.dvc` file, and the folder as a whole is a dependency of the ingest stage: a new batch is a new
data version. The source's split never sees these rows, so the original holdout stays fixed; the
freshest share of them is a second holdout (docs/retraining.md).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.errors import DataError, ParamsError

BATCH_SUFFIX = ".parquet"


def batch_files(folder: str | Path | None) -> list[Path]:
    """The folder's batches, oldest first (by name: a UTC stamp). No folder (or none named in
    params: a project that never retrains): no batches."""
    path = Path(folder) if folder else None
    if path is None or not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(BATCH_SUFFIX))


def conform(frame: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """`frame` with `like`'s column order and dtypes, where its columns are `like`'s. A column set
    that differs is left as is, for the contract to name; a value that cannot take the type fails."""
    if set(frame.columns) != set(like.columns):
        return frame
    frame = frame[list(like.columns)]
    changed = {c: like[c].dtype for c in like.columns if frame[c].dtype != like[c].dtype}
    try:
        return frame.astype(changed) if changed else frame
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"new labelled rows do not fit the data's types: {str(exc).splitlines()[0]}"
        ) from None


def read_batches(folder: str | Path | None, like: pd.DataFrame) -> pd.DataFrame:
    """Every batch, oldest first, as one frame shaped like `like` (the source snapshot); none:
    an empty frame with its columns and types."""
    frames = [conform(pd.read_parquet(path), like) for path in batch_files(folder)]
    if not frames:
        return like.iloc[:0].copy()
    return pd.concat(frames, ignore_index=True)


def fresh_split(labelled: pd.DataFrame, share: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(older rows, for training; the freshest `share` of the rows, rounded up: the fresh holdout)."""
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share < 1:
        raise ParamsError("retrain.fresh_share must be a share between 0 and 1")
    fresh = math.ceil(len(labelled) * share)
    cut = len(labelled) - fresh
    return labelled.iloc[:cut].reset_index(drop=True), labelled.iloc[cut:].reset_index(drop=True)


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """One 64-bit hash per row, of its values only (not its position)."""
    return pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)


def digest(frame: pd.DataFrame) -> str:
    """The rows' identity whatever their order: sha256 over their sorted row hashes and columns."""
    h = hashlib.sha256("\x1f".join(map(str, frame.columns)).encode())
    h.update(np.sort(row_hashes(frame)).tobytes())
    return h.hexdigest()
