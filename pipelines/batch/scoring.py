"""`make batch-predict IN=… OUT=…`: score a table file with the packaged champion.

Everything that can be checked is checked before the model loads: the formats the names declare,
that IN is a readable file and OUT and the rejects file are other files in a writable folder,
and that IN's columns are the model's. Then it reads in chunks (memory stays flat as the file
grows), applies the service's record rules (`schema.row_problems`, strict as the request model
is), and sends refused rows, as they were in IN, to the rejects file with the reason.

OUT and the rejects file are written to temporary files and renamed over their names only when
the whole run succeeded, so they always describe one run: a run that refuses nothing leaves an
empty rejects file (its header), and a failed run leaves both names as they were. Any of the
three names may be an `s3://` URL (tables.py).

The chunks are scored by an engine: here, in this process (the local engine), or on a Dask
cluster (distributed.py). Both read, judge and write through this module, chunk by chunk in
the file's order, so their files are the same row for row.

    python -m pipelines batch IN OUT [--rejects PATH] [--chunk-rows N] [--engine local|dask]
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from pipelines.batch import tables
from pipelines.core import stores
from pipelines.core.errors import DataError, PipelineError
from pipelines.serving import answers, bundle, schema, trust


def rejects_path(source: str, target: str) -> str:
    """Where refused rows go by default: beside the output, as <stem>.rejects<format suffix>."""
    return tables.rejects_name(target)


def _same_file(a: str, b: str) -> bool:
    """One file under two names: the same path after symlinks, or a hard link to it; the same URL."""
    if tables.is_url(a) or tables.is_url(b):
        return a.rstrip("/") == b.rstrip("/")
    if Path(a).resolve() == Path(b).resolve():
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


def check_paths(source: str, target: str, rejects: str, chunk_rows: int) -> tables.Format:
    """Everything about the names, before any work: formats, IN readable, three distinct files."""
    if chunk_rows < 1:
        raise DataError(f"--chunk-rows must be at least 1, not {chunk_rows}")
    fmt = tables.table_format(source)
    tables.table_format(target)
    tables.table_format(rejects)
    kind = tables.path_kind(source)
    if kind != "file":
        raise DataError(f"'{source}' does not exist" if kind is None else f"'{source}' is not a file")
    if not tables.is_url(source) and not os.access(source, os.R_OK):
        raise DataError(f"'{source}' cannot be read: permission denied")
    for name, path in (("OUT", target), ("the rejects file", rejects)):
        if _same_file(source, path):
            raise DataError(f"{name} '{path}' is the input file; write the results elsewhere")
        if tables.path_kind(path) == "folder":
            raise DataError(f"{name} '{path}' exists and is not a file")
    if _same_file(target, rejects):
        raise DataError(f"the rejects file '{rejects}' is OUT; name another with --rejects")
    return fmt


def record_fields(meta: dict[str, Any]) -> dict[str, dict]:
    """The fields a request record may carry, with their rules: features, and optional ids."""
    optional = {name: {**spec, "nullable": True} for name, spec in meta.get("optional_fields", {}).items()}
    return {**meta["fields"], **optional}


def check_columns(columns: list[str], fields: dict, passthrough: set[str]) -> None:
    """IN's columns are the model inputs plus passthrough ones; unknown ones are named by position."""
    missing = [c for c in fields if c not in columns]
    if missing:
        raise DataError(f"input lacks model inputs: {', '.join(missing)}")
    unknown = [str(i + 1) for i, c in enumerate(columns) if c not in fields and c not in passthrough]
    if unknown:
        raise DataError(
            f"input has columns the model does not know: column {', '.join(unknown)} of {len(columns)} "
            f"(expected: {', '.join(fields)}, optionally {', '.join(sorted(passthrough))})"
        )


# The compiled graph's and the native tree library's threads in batch scoring: 0, every core (one
# request is too little work to share; a chunk is not). Both engines use it, since the graph's
# answers depend on it (distributed.py). The library splits rows, not trees, among its threads.
COMPILED_THREADS = 0

_TYPED = ("integer", "number", "boolean")
_DTYPES = {"integer": "Int64", "number": "float64", "boolean": "boolean", "string": "str"}


def typed_frame(values: pd.DataFrame, fields: dict[str, dict]) -> pd.DataFrame:
    """Accepted rows with each field in its contract dtype, the same in every chunk."""
    converted = {}
    for name, spec in fields.items():
        if name in values:
            column = values[name]
            if spec["type"] in ("integer", "number") and column.dtype == object:
                column = pd.to_numeric(column)
            converted[name] = column.astype(_DTYPES[spec["type"]])
    return values.assign(**converted)


def model_input(typed: pd.DataFrame, fields: dict[str, dict]) -> pd.DataFrame:
    """What the model sees: numbers as floats with NaN for missing, as a request's frame has them."""
    cast = {}
    for name, spec in fields.items():
        if spec["type"] == "integer":
            cast[name] = typed[name].astype("float64")
        elif spec["type"] == "boolean":
            cast[name] = typed[name].astype(object).where(typed[name].notna(), np.nan)
    return typed.assign(**cast)


def typed_columns(fields: dict[str, dict]) -> dict[str, str]:
    """The fields a CSV cell must be read as a literal for ({name: contract type})."""
    return {name: spec["type"] for name, spec in fields.items() if spec["type"] in _TYPED}


def score_raw(
    loaded: bundle.LoadedModel, raw: pd.DataFrame, kind: str, typed: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One chunk as read from a file of `kind` ("text" or "parquet"): every engine's one path."""
    values = tables.text_cells(raw, typed) if kind == "text" else raw
    return score_chunk(loaded, raw, values, loaded.meta["limits"]["max_string_length"])


def score_chunk(
    loaded: bundle.LoadedModel, raw: pd.DataFrame, values: pd.DataFrame, max_string_length: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(accepted rows, typed, with prediction columns; refused rows as read, with their reason)."""
    fields = record_fields(loaded.meta)
    problems = schema.row_problems(
        values, {k: v for k, v in fields.items() if k in values}, max_string_length
    )
    refused = problems.notna()
    bad = raw[refused].assign(reason=problems[refused])
    good = typed_frame(values[~refused], fields)
    if len(good):
        predictions, probabilities = answers.answer_frame(loaded, model_input(good, loaded.meta["fields"]))
        good = good.assign(prediction=predictions)
        if probabilities is not None:
            good = pd.concat([good, probabilities.set_index(good.index)], axis=1)
    return good, bad


def output_columns(loaded: bundle.LoadedModel, columns: list[str]) -> list[str]:
    """OUT's header when no row was accepted: the input's columns and the prediction columns."""
    return header(loaded.task, loaded.classes, columns)


def header(task: str, classes: list[Any], columns: list[str]) -> list[str]:
    extra = ["prediction"]
    if task == "classification":
        extra += [f"probability_{c}" for c in classes]
    return [*columns, *extra]


# (rows read, accepted rows with predictions, refused rows with reasons), one per chunk, in order.
Scored = tuple[int, pd.DataFrame, pd.DataFrame]


class Scorer(Protocol):
    """A started engine: it scores chunks in the order given, and knows the model's outputs."""

    def results(
        self, chunks: Iterator[pd.DataFrame], kind: str, typed: dict[str, str]
    ) -> Iterator[Scored]: ...

    def output_columns(self, columns: list[str]) -> list[str]: ...


# An engine starts from the verified model's folder and meta; leaving the context stops it.
Engine = Callable[[Path, dict[str, Any]], contextlib.AbstractContextManager[Scorer]]


class LocalScorer:
    """This process scores: the model loaded once, chunks one after another."""

    def __init__(self, loaded: bundle.LoadedModel) -> None:
        self.loaded = loaded

    def results(self, chunks: Iterator[pd.DataFrame], kind: str, typed: dict[str, str]) -> Iterator[Scored]:
        from threadpoolctl import threadpool_limits

        # One OpenMP thread for the scikit-learn fallback: its spin-waiting stalls a busy box.
        with threadpool_limits(1):
            for raw in chunks:
                yield (len(raw), *score_raw(self.loaded, raw, kind, typed))

    def output_columns(self, columns: list[str]) -> list[str]:
        return output_columns(self.loaded, columns)


@contextlib.contextmanager
def local_engine(model_path: Path, meta: dict[str, Any]) -> Iterator[Scorer]:
    """The engine of one process (`--engine local`)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # see LocalScorer
        loaded = _trusted(bundle.load, model_path, threads=COMPILED_THREADS)
    yield LocalScorer(loaded)


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (a scheduler's stop) unwinds like Ctrl-C, so the temporary files are removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _trusted(load: Any, *args: Any, **kwargs: Any) -> Any:
    """A model the project refuses to load is one line, like any other refusal."""
    try:
        return load(*args, **kwargs)
    except trust.Untrusted as exc:
        raise PipelineError(str(exc)) from None


def _open_sinks(target: str, rejects: str) -> tuple[tables.Sink, tables.Sink]:
    opened: list[tables.Sink] = []
    try:
        for path in (target, rejects):
            if tables.is_url(path):
                tables.check_bucket(path)
            else:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            opened.append(tables.Sink(path))
    except OSError as exc:
        for sink in opened:
            sink.discard()
        folder = Path(path).parent
        raise DataError(f"cannot write to '{folder}': {exc.strerror or type(exc).__name__}") from None
    except DataError:
        for sink in opened:
            sink.discard()
        raise
    return opened[0], opened[1]


def run(
    source: str,
    target: str,
    rejects: str,
    chunk_rows: int,
    model_path: Path,
    engine: Engine = local_engine,
) -> tuple[int, int]:
    """Score `source` with the model at `model_path` on `engine`. (scored, refused) rows.

    Names, the model's meta and IN's columns are checked, and the outputs opened, before the
    engine starts: a mistake costs no model load and no cluster."""
    from tqdm import tqdm

    fmt = check_paths(source, target, rejects, chunk_rows)
    meta = _trusted(bundle.read_meta, model_path)
    fields = record_fields(meta)
    columns = tables.columns(source, fmt)
    check_columns(columns, meta["fields"], set(fields) | {meta.get("target")})
    rows = tables.total_rows(source, fmt)
    with _terminate_as_exit():
        out, bad = _open_sinks(target, rejects)
        try:
            with engine(model_path, meta) as scorer:
                # The bar shows only on a terminal, so a failure is still one line on stderr.
                with tqdm(total=rows, unit="rows", desc="scoring", disable=None) as bar:
                    chunks = tables.chunks(source, fmt, chunk_rows)
                    for read, good, refused in scorer.results(chunks, fmt.kind, typed_columns(fields)):
                        if len(good):
                            out.write(good)
                        if len(refused):
                            bad.write(refused)
                        bar.update(read)
                names = scorer.output_columns(columns)
            out.stage(pd.DataFrame(columns=names))
            bad.stage(pd.DataFrame(columns=[*columns, "reason"]))
            out.publish()
            bad.publish()
        finally:
            out.discard()
            bad.discard()
    return out.rows, bad.rows


def champion_path(root: Path, params: dict) -> Path:
    """The packaged champion in the project's BentoML store (what `make package` built)."""
    stores.use_bentoml_home(root, params)
    import bentoml

    try:
        return Path(bentoml.models.get(f"{bundle.MODEL_NAME}:latest").path)
    except bentoml.exceptions.NotFound:
        raise PipelineError("no packaged champion: run `make package` first") from None


def score_file(
    root: Path,
    params: dict,
    source: str,
    target: str,
    rejects: str,
    chunk_rows: int,
    engine: Engine = local_engine,
) -> tuple[int, int]:
    """Check the names before importing BentoML or loading anything; then score."""
    check_paths(source, target, rejects, chunk_rows)
    return run(source, target, rejects, chunk_rows, champion_path(root, params), engine)
