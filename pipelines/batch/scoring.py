"""`make batch-predict IN=… OUT=…`: score a table file with the packaged champion.

Everything that can be checked is checked before the model loads: the formats the names declare,
that IN is a readable file and OUT and the rejects file are other files in a writable folder,
and that IN's columns are the model's. Then it reads in chunks (memory stays flat as the file
grows), applies the service's record rules (`schema.row_problems`, strict as the request model
is), and sends refused rows, as they were in IN, to the rejects file with the reason.

OUT and the rejects file are written to temporary files and renamed over their names only when
the whole run succeeded, so they always describe one run: a run that refuses nothing leaves an
empty rejects file (its header), and a failed run leaves both names as they were.

    python -m pipelines batch IN OUT [--rejects PATH] [--chunk-rows N]
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    """One file under two names: the same path after symlinks, or a hard link to it."""
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
    if not Path(source).is_file():
        raise DataError(
            f"'{source}' does not exist" if not Path(source).exists() else f"'{source}' is not a file"
        )
    if not os.access(source, os.R_OK):
        raise DataError(f"'{source}' cannot be read: permission denied")
    for name, path in (("OUT", target), ("the rejects file", rejects)):
        if _same_file(source, path):
            raise DataError(f"{name} '{path}' is the input file; write the results elsewhere")
        if Path(path).exists() and not Path(path).is_file():
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
    extra = ["prediction"]
    if loaded.task == "classification":
        extra += [f"probability_{c}" for c in loaded.classes]
    return [*columns, *extra]


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
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            opened.append(tables.Sink(path))
    except OSError as exc:
        for sink in opened:
            sink.discard()
        folder = Path(path).parent
        raise DataError(f"cannot write to '{folder}': {exc.strerror or type(exc).__name__}") from None
    return opened[0], opened[1]


def run(source: str, target: str, rejects: str, chunk_rows: int, model_path: Path) -> tuple[int, int]:
    """Score `source` with the model at `model_path`. (scored, refused) rows."""
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    fmt = check_paths(source, target, rejects, chunk_rows)
    meta = _trusted(bundle.read_meta, model_path)
    fields = record_fields(meta)
    columns = tables.columns(source, fmt)
    check_columns(columns, meta["fields"], set(fields) | {meta.get("target")})
    rows = tables.total_rows(source, fmt)
    typed = {name: spec["type"] for name, spec in fields.items() if spec["type"] in _TYPED}
    with _terminate_as_exit():
        out, bad = _open_sinks(target, rejects)
        try:
            with threadpool_limits(1):  # see below
                loaded = _trusted(bundle.load, model_path, threads=0)  # the graph may use every core
            max_length = loaded.meta["limits"]["max_string_length"]
            # One OpenMP thread for the scikit-learn fallback: its spin-waiting stalls a busy box.
            # The bar shows only on a terminal, so a failure is still one line on stderr.
            with threadpool_limits(1), tqdm(total=rows, unit="rows", desc="scoring", disable=None) as bar:
                for raw in tables.chunks(source, fmt, chunk_rows):
                    values = tables.text_cells(raw, typed) if fmt.kind == "text" else raw
                    good, refused = score_chunk(loaded, raw, values, max_length)
                    if len(good):
                        out.write(good)
                    if len(refused):
                        bad.write(refused)
                    bar.update(len(raw))
            out.commit(pd.DataFrame(columns=output_columns(loaded, columns)))
            bad.commit(pd.DataFrame(columns=[*columns, "reason"]))
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
    root: Path, params: dict, source: str, target: str, rejects: str, chunk_rows: int
) -> tuple[int, int]:
    """Check the names before importing BentoML or loading anything; then score."""
    check_paths(source, target, rejects, chunk_rows)
    return run(source, target, rejects, chunk_rows, champion_path(root, params))
