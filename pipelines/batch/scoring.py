"""`make batch-predict IN=… OUT=…`: score a CSV or Parquet file with the packaged champion.

It reads in chunks (memory stays flat as the file grows), applies the service's record rules,
sends refused rows to a reject file with the reason, and writes the output atomically.

    python -m pipelines batch IN OUT [--rejects PATH] [--chunk-rows N]
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from pipelines.core import files, stores
from pipelines.core.errors import DataError, PipelineError
from pipelines.serving import answers, bundle, schema


def chunks(source: str, rows: int) -> Iterator[pd.DataFrame]:
    if files.table_format(source) == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(source).iter_batches(batch_size=rows):
            yield batch.to_pandas()
    else:
        yield from pd.read_csv(source, chunksize=rows)


def total_rows(source: str) -> int | None:
    if files.table_format(source) == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(source).metadata.num_rows
    return None


def check_columns(columns: list[str], fields: dict, passthrough: set[str]) -> None:
    missing = [c for c in fields if c not in columns]
    if missing:
        raise DataError(f"input lacks model inputs: {', '.join(missing)}")
    unknown = [c for c in columns if c not in fields and c not in passthrough]
    if unknown:
        raise DataError(f"input has columns the model does not know: {', '.join(unknown)}")


def score_chunk(
    loaded: bundle.LoadedModel, chunk: pd.DataFrame, limits: dict
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scored rows with prediction columns, refused rows with their reason)."""
    problems = schema.row_problems(chunk, loaded.meta["fields"], limits["max_string_length"])
    good, bad = chunk[problems.isna()], chunk[problems.notna()].assign(reason=problems[problems.notna()])
    if len(good):
        predictions, probabilities = answers.answer_frame(loaded, good)
        good = good.assign(prediction=predictions)
        if probabilities is not None:
            good = pd.concat([good, probabilities.set_index(good.index)], axis=1)
    return good, bad


class Sink:
    """Appends frames to a CSV or Parquet file through a temporary file, renamed at the end."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.format = files.table_format(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        self.writer = None
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        if self.format == "csv":
            frame.to_csv(self.tmp, mode="a", header=self.rows == 0, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.tmp, table.schema)
            self.writer.write_table(table.cast(self.writer.schema))
        self.rows += len(frame)

    def close(self, keep: bool) -> None:
        if self.writer is not None:
            self.writer.close()
        if keep:
            os.replace(self.tmp, self.path)
        self.tmp.unlink(missing_ok=True)


def run(source: str, target: str, rejects: str, chunk_rows: int, model_path: Path) -> tuple[int, int]:
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    with threadpool_limits(1):  # see below
        loaded = bundle.load(model_path, threads=0)  # the compiled graph may use every core
    limits = loaded.meta["limits"]
    passthrough = set(loaded.meta.get("optional_fields", {})) | {loaded.meta.get("target")}
    out, bad = Sink(target), Sink(rejects)
    ok = False
    try:
        # One OpenMP thread for the scikit-learn fallback: its spin-waiting stalls a busy box.
        with threadpool_limits(1), tqdm(total=total_rows(source), unit="rows", desc="scoring") as bar:
            for chunk in chunks(source, chunk_rows):
                check_columns(list(chunk.columns), loaded.meta["fields"], passthrough)
                good, refused = score_chunk(loaded, chunk, limits)
                if len(good):
                    out.write(good)
                if len(refused):
                    bad.write(refused)
                bar.update(len(chunk))
        ok = True
    finally:
        out.close(keep=ok)
        bad.close(keep=ok and bad.rows > 0)
    return out.rows, bad.rows


def champion_path(root: Path, params: dict) -> Path:
    """The packaged champion in the project's BentoML store (what `make package` built)."""
    stores.use_bentoml_home(root, params)
    import bentoml

    try:
        return Path(bentoml.models.get(f"{bundle.MODEL_NAME}:latest").path)
    except bentoml.exceptions.NotFound:
        raise PipelineError("no packaged champion: run `make package` first") from None


def rejects_path(source: str, target: str) -> str:
    """Where refused rows go by default: beside the output, as <stem>.rejects<suffix>."""
    path = Path(target)
    return str(path.with_name(f"{path.stem}.rejects{path.suffix}"))


def score_file(
    root: Path, params: dict, source: str, target: str, rejects: str, chunk_rows: int
) -> tuple[int, int]:
    """Check the names and the input before loading anything; then score. (scored, refused) rows."""
    files.table_format(source)
    files.table_format(target)
    if not Path(source).is_file():
        raise DataError(f"'{source}' does not exist")
    model_path = champion_path(root, params)
    try:
        return run(source, target, rejects, chunk_rows, model_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"'{source}' cannot be read: {str(exc).splitlines()[0]}") from None
