"""Reading the prediction log the service writes (pipelines/serving/prediction_log.py has the layout).

Every file is read: each worker's active `predictions.<worker>.jsonl` and its rotated files, plain or
gzipped, oldest rotation first. Lines arrive as pandas frames of bounded size (one pyarrow block
each), so memory does not grow with the log; `recent` keeps only the window asked for.

A frame's columns: `request_id`, `record`, `timestamp` (UTC), `model_version`, `latency_ms`,
`worker` (from the file name), `role`, `prediction`, one `inputs.<column>` per input and, for
classification, one `probabilities.<label>` per class. `role` (docs/rollout.md) is the arm that
answered (`champion`, `challenger`) or `shadow` for the other arm's answer, which was never
returned; lines written before roles existed count as `champion`. It comes with every read of all
fields, and with `only` when `only` names it; `answered` drops the shadow lines. The inputs are namespaced as the log
namespaces them, so an input named `timestamp` cannot replace the log's own field.

pyarrow.json's streaming reader was measured the fastest correct reader here: 100k lines of 20
inputs parsed in 1.5-1.8 s with every field, 0.35-0.8 s with only the fixed ones (`only=()`),
against 3.0 s for `json.loads` per line; chunks parsed by `read_json` while a thread gunzipped the
next were slower (11.4 s against 9.1 s for bench/monitor_logs.py's 1M lines). All on a loaded
2-core machine.

Where the time goes, 1M lines with the join's fields (cProfile and CPU seconds): gunzip about
1.5 s, pyarrow's tokenising of every byte about 2.9 s (the same with every field ignored), building
the wanted columns about 1.3 s, and the pandas conversion in `_frame` 0.26 s. Converting fewer
columns therefore cannot save much. A thread reading frames ahead of the caller did not help either
(same CPU; pyarrow already gunzips and parses on its own threads): bench/README.md has the figures.

So rotated files, which never change once written, are parsed once and kept, every field, as Arrow
IPC files (lz4) in `<log dir>/cache/`; later reads take only the columns asked for, one record
batch at a time, and parse only the active files. On bench/monitor_logs.py's 1M lines (137k of
them in active files) the join took 2.3-2.5 s warm against 5.8-6.6 s, read + operations 1.0-1.1 s
against 4.7-5.8 s; the first read after a rotation pays the full parse of the new file once. `cache=False` reads as
before. The section "the cache of rotated files" below has the rules.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import secrets
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.json as pj

from pipelines.monitoring.errors import MonitorError

BLOCK_BYTES = 16 << 20  # one pyarrow block (~35k lines of 20 inputs): a frame's size, whatever the log's
WHOLE_ROWS = 1 << 16  # a frame's rows when a file had to be parsed whole (a type changed within it)
CACHE_DIR = "cache"  # <log dir>/cache/, beside predictions/: parsed rotated files; the service never looks
CACHE_FORMAT = 1  # raise when what an entry holds changes: older entries are then rebuilt
CACHE_KEY = b"tabular_mlops.prediction_log_cache"  # the entry's schema metadata: its format and source
CACHE_COMPRESSION = "lz4"  # half the size of uncompressed Arrow, read as fast (bench/README.md)
CACHE_TEMP_MAX_AGE_S = 3600.0  # a temporary entry this old was left by a run that died: deleted
INPUTS = "inputs."
PROBABILITIES = "probabilities."
# Fixed by the writer (pipelines/serving/log_lines.encode); inputs, prediction and probabilities are inferred.
FIELDS = pa.schema(
    [
        ("request_id", pa.string()),
        ("record", pa.int64()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("model_version", pa.string()),
        ("latency_ms", pa.float64()),
    ]
)
REQUIRED = (*FIELDS.names, "prediction")
ROLE = "role"  # optional: older lines have none, and count as DEFAULT_ROLE
DEFAULT_ROLE = "champion"
SHADOW = "shadow"  # scored off the request path by the arm that did not answer: not an answer
LOG_FILE = re.compile(
    r"predictions\.(?P<worker>[A-Za-z0-9_-]{1,64})(?:\.(?P<stamp>\d{8}T\d{12}Z))?\.jsonl(?P<gz>\.gz)?"
)
OUTCOME_FILE = re.compile(r"outcomes\.(?P<worker>[A-Za-z0-9_-]{1,64})\..*jsonl")


def log_roots(root: str | Path) -> list[tuple[str, Path]]:
    """(prefix, folder) of each service log folder under `root`: `root` itself (prefix "") when it
    holds a log of its own, then every direct sub-folder that does, prefixed `<name>/`: a fleet's
    replicas each write to `<root>/<replica>/` (pipelines/team/fleet.py). The prefix keeps workers of
    different replicas apart, since each replica numbers its workers from 1."""
    base = Path(root)
    parts = ("predictions", "outcomes", "feedback")
    found = [("", base)] if any((base / part).is_dir() for part in parts) else []
    if base.is_dir():
        for child in sorted(base.iterdir()):
            if child.is_dir() and any((child / part).is_dir() for part in parts):
                found.append((f"{child.name}/", child))
    return found


def log_files(root: str | Path) -> list[tuple[str, Path]]:
    """(worker, path) of every prediction log file under `root` (and its replica folders, see
    log_roots; their workers prefixed `<replica>/`), oldest first: rotated files by stamp, then the
    active ones. A rotation caught between its .jsonl and its .gz counts once."""
    folders = [(prefix, folder / "predictions") for prefix, folder in log_roots(root)]
    folders = [(prefix, folder) for prefix, folder in folders if folder.is_dir()]
    if not folders:
        raise MonitorError(f"no prediction log folder at {Path(root) / 'predictions'}")
    found: dict[tuple[str, str], Path] = {}
    for prefix, folder in folders:
        for path in folder.iterdir():
            match = LOG_FILE.fullmatch(path.name)
            if not match:
                continue
            key = (match["stamp"] or "~active", prefix + match["worker"])  # "~" sorts after every stamp
            # compress() writes the .gz whole (os.replace) before removing the plain file: prefer it.
            if key not in found or match["gz"]:
                found[key] = path
    return [(worker, found[(stamp, worker)]) for stamp, worker in sorted(found)]


def iter_frames(
    root: str | Path,
    block_bytes: int = BLOCK_BYTES,
    only: Collection[str] | None = None,
    cache: bool = True,
) -> Iterator[pd.DataFrame]:
    """Every logged record, as frames of at most one block each. Raises MonitorError when the folder
    is missing, when it holds no record, or at the first corrupt line (naming file and line).

    `only` names the top-level fields wanted besides the fixed ones (e.g. `prediction`,
    `probabilities`; `()` for none): the parser then skips the others, which on 20 input columns
    made reading 2-4x faster (bench/monitor_logs.py). The frame holds the fixed fields, then those
    of `only` in its order.

    With `cache`, rotated files are read from their parsed copy in `<root>/cache/` (made on first
    read; see "The cache" above): the same frames, but a file whose types changed within it comes
    with the whole file's types in every frame."""
    files = log_files(root)
    caches: dict[Path, Path | None] = {}  # each log folder's own cache (a replica's beside its log)
    for predictions in {path.parent for _, path in files}:
        caches[predictions] = _cache_folder(predictions.parent) if cache else None
        if caches[predictions] is not None:
            _prune_cache(caches[predictions], predictions)
    empty = True
    for worker, path in files:
        for frame in _file_frames(path, block_bytes, only, caches[path.parent]):
            if len(frame):
                empty = False
                frame["worker"] = worker
                yield frame
    if empty:
        raise MonitorError(f"the prediction log in {Path(root) / 'predictions'} holds no records")


def _wanted(names: Sequence[str], only: Collection[str] | None) -> list[str]:
    """The top-level columns a caller gets, in order: the fixed fields, then those of `only`."""
    if only is None:
        return list(names)
    extra = [name for name in dict.fromkeys(only) if name not in FIELDS.names]
    return [name for name in (*FIELDS.names, *extra) if name in names]


def _open(path: Path) -> pa.NativeFile:
    return pa.input_stream(str(path), compression="gzip" if path.name.endswith(".gz") else None)


def _schema(path: Path, only: Collection[str] | None) -> tuple[pa.Schema, str]:
    """The parse schema and the treatment of other fields. The types of wanted fields beyond the
    fixed ones come from the file's first line; a field it lacks (or holds as null) is inferred."""
    if only is None:
        return FIELDS, "infer"
    fixed = pa.schema([*FIELDS, (ROLE, pa.string())]) if ROLE in only else FIELDS
    extra = [name for name in only if name not in fixed.names]
    if not extra:
        return fixed, "ignore"
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as lines:
        first = lines.readline()
    try:
        sample = pj.read_json(pa.py_buffer(first)).schema
    except pa.ArrowInvalid:
        raise MonitorError(_corrupt(path, number=1)) from None
    found = [sample.field(name) for name in extra if name in sample.names]
    if len(found) < len(extra) or any(pa.types.is_null(f.type) for f in found):
        return fixed, "infer"
    return pa.schema([*fixed, *found]), "ignore"


def _file_frames(
    path: Path, block_bytes: int, only: Collection[str] | None, cache: Path | None
) -> Iterator[pd.DataFrame]:
    required = REQUIRED if only is None else (*FIELDS.names, *(n for n in only if n == "prediction"))
    done = 0
    reader = _cached(cache, path, block_bytes, only) if cache is not None else None
    if reader is not None:
        try:
            for index in range(reader.num_record_batches):
                batch = reader.get_batch(index)
                batch.validate(full=True)  # a damaged entry must fail here, not crash pyarrow later
                frame = _frame(batch, path, required, only)
                done += len(frame)
                yield frame
            return
        except (pa.ArrowException, OSError, MonitorError):  # damaged in place: parse the rest
            with contextlib.suppress(OSError):  # the next read rebuilds it
                (cache / _entry_name(path)).unlink(missing_ok=True)
    yield from _skip(_parsed_frames(path, block_bytes, only, required), done)


def _skip(frames: Iterable[pd.DataFrame], rows: int) -> Iterator[pd.DataFrame]:
    """`frames` without their first `rows` rows (those a damaged cache entry gave already)."""
    for frame in frames:
        if rows >= len(frame):
            rows -= len(frame)
            continue
        yield frame.iloc[rows:].reset_index(drop=True) if rows else frame
        rows = 0


def _parsed_frames(
    path: Path, block_bytes: int, only: Collection[str] | None, required: Sequence[str]
) -> Iterator[pd.DataFrame]:
    read = pj.ReadOptions(block_size=block_bytes)
    done = 0
    try:
        if path.stat().st_size == 0:  # a worker that has answered nothing yet
            return
        schema, others = _schema(path, only)
        parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior=others)
        reader = pj.open_json(_open(path), read_options=read, parse_options=parse)
        batches: Iterable[pa.RecordBatch] = reader
        for batch in batches:
            yield _frame(batch, path, required, only)
            done += batch.num_rows
    except FileNotFoundError:
        return  # pruned by the service while we read: its lines are gone for every reader
    except pa.ArrowInvalid:
        number = first_bad_line(path)
        if number is not None:
            raise MonitorError(_corrupt(path, number=number)) from None
        # Every line is valid, but a type changed within the file (a column null in a whole first
        # block, or unlike the first line): read the file at once, inferring types across all of it.
        # Memory is then one file's worth, bounded by the rotation size.
        table = _whole(path, read).slice(done)  # the rows before were yielded already
        for batch in table.to_batches(max_chunksize=WHOLE_ROWS):
            yield _frame(batch, path, required, only)
    except (OSError, EOFError, gzip.BadGzipFile):
        raise MonitorError(f"{_name(path)}: the file cannot be read (truncated or not gzip)") from None


def _whole(path: Path, read: pj.ReadOptions) -> pa.Table:
    parse = pj.ParseOptions(explicit_schema=FIELDS, unexpected_field_behavior="infer")
    try:
        return pj.read_json(_open(path), read_options=read, parse_options=parse)
    except pa.ArrowInvalid:
        raise MonitorError(_corrupt(path)) from None


# --- the cache of rotated files ---
# Parsing costs about 5 CPU s per 1M lines (see the top), but a rotated file never changes once
# written, so each is parsed once, with every field, and kept as an Arrow IPC file; later reads take
# only the columns asked for, batch by batch. An entry is keyed by its source's name, size and
# mtime_ns (and CACHE_FORMAT), written whole (temporary file + os.replace) and only from a file that
# parsed without error. Anything that does not match or cannot be read is rebuilt, never trusted;
# a folder that cannot be written leaves reading as it was. Active files grow, so are never cached.


def _cache_folder(root: Path) -> Path | None:
    """`<root>/cache`, made private (0700) if missing; None when it neither exists nor can be made."""
    folder = root / CACHE_DIR
    with contextlib.suppress(OSError):  # e.g. a read-only log folder: entries that exist may be read
        folder.mkdir(mode=0o700, exist_ok=True)
    return folder if folder.is_dir() else None


def _entry_name(path: Path) -> str:
    return f"{path.name}.arrow"


def _prune_cache(folder: Path, predictions: Path) -> None:
    """Deletes entries whose source is gone (pruned by the service) and old temporary files."""
    with contextlib.suppress(OSError):  # a read-only folder, or a file removed meanwhile: next run
        sources = {path.name for path in predictions.iterdir()}
        for entry in folder.iterdir():
            if _orphan(entry, sources):
                entry.unlink(missing_ok=True)


def _orphan(entry: Path, sources: set[str]) -> bool:
    name = entry.name
    if name.endswith(".arrow") and LOG_FILE.fullmatch(name.removesuffix(".arrow")):
        return name.removesuffix(".arrow") not in sources
    temporary = name.startswith(".predictions.") and name.endswith(".tmp")
    return temporary and time.time() - entry.stat().st_mtime > CACHE_TEMP_MAX_AGE_S


def _cached(
    folder: Path, path: Path, block_bytes: int, only: Collection[str] | None
) -> ipc.RecordBatchFileReader | None:
    """A reader of `path`'s entry, with only the columns wanted; built first if missing or stale.
    None for active files and whenever the entry cannot be had: the file is then parsed."""
    match = LOG_FILE.fullmatch(path.name)
    if match is None or match["stamp"] is None:
        return None
    try:
        source = path.stat()
    except OSError:
        return None
    if source.st_size == 0:
        return None
    entry = folder / _entry_name(path)
    reader = _open_entry(entry, _identity(path, source), only)
    if reader is None:
        with contextlib.suppress(OSError):  # stale or damaged: useless, even if it cannot be rebuilt
            entry.unlink(missing_ok=True)
        if _build(entry, path, source, block_bytes):
            reader = _open_entry(entry, _identity(path, source), only)
    return reader


def _identity(path: Path, source: os.stat_result) -> bytes:
    return json.dumps(
        {"format": CACHE_FORMAT, "source": path.name, "size": source.st_size, "mtime_ns": source.st_mtime_ns},
        sort_keys=True,
    ).encode()


def _open_entry(
    entry: Path, identity: bytes, only: Collection[str] | None
) -> ipc.RecordBatchFileReader | None:
    try:
        with pa.OSFile(str(entry)) as head:
            schema = ipc.open_file(head).schema
        if (schema.metadata or {}).get(CACHE_KEY) != identity:
            return None
        names = set(_wanted(schema.names, only))
        fields = [index for index, name in enumerate(schema.names) if name in names]
        return ipc.open_file(pa.OSFile(str(entry)), options=ipc.IpcReadOptions(included_fields=fields))
    except (pa.ArrowException, OSError):
        return None  # missing, truncated or not ours


def _build(entry: Path, path: Path, source: os.stat_result, block_bytes: int) -> bool:
    """Parses `path` into a new entry; False (and nothing written) when it cannot be cached."""
    temp = entry.with_name(f".{entry.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError:
        return False  # a read-only cache folder: read as before
    try:
        _write_entry(temp, path, _identity(path, source), block_bytes)
        after = path.stat()
        if (after.st_size, after.st_mtime_ns) != (source.st_size, source.st_mtime_ns):
            return False
        os.replace(temp, entry)
        return True
    # Any failure (a corrupt or vanished source, a full disk) only means no entry: the file is
    # then parsed as without a cache, which raises what needs raising.
    except Exception:
        return False
    finally:
        temp.unlink(missing_ok=True)


def _write_entry(temp: Path, path: Path, identity: bytes, block_bytes: int) -> None:
    read = pj.ReadOptions(block_size=block_bytes)
    parse = pj.ParseOptions(explicit_schema=FIELDS, unexpected_field_behavior="infer")
    try:
        _write(temp, pj.open_json(_open(path), read_options=read, parse_options=parse), path, identity)
    except pa.ArrowInvalid:
        if first_bad_line(path) is not None:
            raise
        # A type changed within the file: the entry holds it parsed whole, with one set of types.
        _write(temp, _whole(path, read).to_batches(max_chunksize=WHOLE_ROWS), path, identity)


def _write(temp: Path, batches: Iterable[pa.RecordBatch], path: Path, identity: bytes) -> None:
    """The batches, checked as any reader would, into `temp` (rewritten from its start)."""
    options = ipc.IpcWriteOptions(compression=CACHE_COMPRESSION)
    with pa.OSFile(str(temp), "wb") as sink:
        writer = None
        for batch in batches:
            _check(batch, path, REQUIRED)
            if writer is None:
                schema = batch.schema.with_metadata({CACHE_KEY: identity})
                writer = ipc.new_file(sink, schema, options=options)
            writer.write_batch(batch)
        if writer is None:
            raise MonitorError(f"{_name(path)}: no lines")
        writer.close()


def _check(batch: pa.RecordBatch, path: Path, required: Sequence[str]) -> None:
    missing = [name for name in required if name not in batch.schema.names]
    if missing:
        raise MonitorError(f"{_name(path)}: lines without '{missing[0]}'; is this a prediction log?")
    for name in FIELDS.names:
        if batch.column(name).null_count:
            raise MonitorError(_corrupt(path, f"a line without '{name}'"))


def _frame(
    batch: pa.RecordBatch, path: Path, required: Sequence[str], only: Collection[str] | None
) -> pd.DataFrame:
    _check(batch, path, required)
    batch = batch.select(_wanted(batch.schema.names, only))
    frame = pa.Table.from_batches([batch]).flatten().to_pandas()
    if only is None or ROLE in only:
        frame[ROLE] = frame[ROLE].fillna(DEFAULT_ROLE) if ROLE in frame else DEFAULT_ROLE
    return frame


def answered(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """The frames without their shadow lines: only the answers the service returned (read with
    `role`). The monitor's traffic, drift, quality, operations and live performance see only these."""
    for frame in frames:
        yield frame[frame[ROLE] != SHADOW].reset_index(drop=True) if ROLE in frame else frame


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _corrupt(path: Path, problem: str = "a corrupt line", number: int | None = None) -> str:
    """The message for a file pyarrow refused, with the first bad line's number, found by a second
    pass in Python (only on this error path). It never quotes the line."""
    number = number or first_bad_line(path)
    where = f" at line {number}" if number else ""
    return f"{_name(path)}: {problem}{where} (not a JSON object with the log's fields)"


def first_bad_line(path: Path) -> int | None:
    """The 1-based number of the first line that is not a JSON object with the log's fields."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    entry = json.loads(line)
                except ValueError:
                    return number
                if not isinstance(entry, dict) or any(entry.get(key) is None for key in REQUIRED):
                    return number
    except (OSError, EOFError):
        return None
    return None


def recent(
    frames: Iterable[pd.DataFrame], rows: int | None = None, span: timedelta | None = None
) -> pd.DataFrame:
    """The window the monitor looks at, sorted by time: the last `rows` records, and/or those within
    `span` of the newest record. Holds at most about twice the window, never the whole log."""
    if rows is None and span is None:
        raise ValueError("a window needs rows, a span, or both")
    kept: list[pd.DataFrame] = []
    held = 0
    newest: pd.Timestamp | None = None
    for frame in frames:
        top = frame["timestamp"].max()
        newest = top if newest is None or top > newest else newest
        if span is not None:
            frame = frame[frame["timestamp"] >= newest - span]
        kept.append(frame)
        held += len(frame)
        if rows is not None and held > 2 * rows:
            kept, held = [_trim(kept, rows, span, newest)], rows
    window = _trim(kept, rows, span, newest) if kept else pd.DataFrame()
    return window.reset_index(drop=True)


def _trim(
    frames: list[pd.DataFrame], rows: int | None, span: timedelta | None, newest: pd.Timestamp | None
) -> pd.DataFrame:
    frame = pd.concat(frames, ignore_index=True)
    if span is not None and newest is not None:
        frame = frame[frame["timestamp"] >= newest - span]
    # Stable, so records of one request (one timestamp) keep their order.
    frame = frame.sort_values("timestamp", kind="stable")
    return frame.tail(rows) if rows is not None else frame


def input_columns(frame: pd.DataFrame) -> list[str]:
    """The model's input names in a frame (without the `inputs.` prefix)."""
    return [name.removeprefix(INPUTS) for name in frame.columns if name.startswith(INPUTS)]


def class_columns(frame: pd.DataFrame) -> list[str]:
    """The class labels of the probability columns (empty for regression), as the log keys them."""
    return [name.removeprefix(PROBABILITIES) for name in frame.columns if name.startswith(PROBABILITIES)]


def read_outcomes(root: str | Path) -> pd.DataFrame:
    """Every worker's request counts by outcome: one row per (worker, window_start, version,
    outcome), with `window_s` and `count`; `version` is None on lines written before outcome
    counts carried one. The files are small (one line per window per worker), read whole.
    A folder without outcome files gives an empty frame: a service that answered nothing but `ok`
    before its first window closed has written none yet."""
    rows: list[dict] = []
    for prefix, folder in _outcome_folders(root):
        for path in sorted(folder.iterdir()):
            if OUTCOME_FILE.fullmatch(path.name):
                rows.extend(_outcome_rows(path, prefix))
    frame = pd.DataFrame(rows, columns=["worker", "window_start", "window_s", "version", "outcome", "count"])
    frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True)
    return frame.astype({"count": "int64", "window_s": "float64", "version": "object"})


def read_role_outcomes(root: str | Path) -> pd.DataFrame:
    """The outcome lines' `by_role` counts (docs/rollout.md): one row per (worker, window_start,
    role, outcome), with `window_s` and `count`. `role` is `champion` or `challenger` for the arm
    that answered, `shadow` for the off-path scoring (not a request). Lines without `by_role`
    (before routing existed, or windows with no routed request) give no rows."""
    rows: list[dict] = []
    for prefix, folder in _outcome_folders(root):
        for path in sorted(folder.iterdir()):
            if OUTCOME_FILE.fullmatch(path.name):
                for base, _, by_role in _outcome_entries(path, prefix):
                    for role, counts in by_role.items():
                        rows.extend(
                            {**base, "role": role, "outcome": k, "count": n} for k, n in counts.items()
                        )
    frame = pd.DataFrame(rows, columns=["worker", "window_start", "window_s", "role", "outcome", "count"])
    frame["window_start"] = pd.to_datetime(frame["window_start"], utc=True)
    return frame.astype({"count": "int64", "window_s": "float64"})


def _counts_ok(counts: object) -> bool:
    return isinstance(counts, dict) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts.values()
    )


def _outcome_folders(root: str | Path) -> list[tuple[str, Path]]:
    """(worker prefix, outcomes folder) of `root` and of each replica folder (log_roots)."""
    return [
        (prefix, folder / "outcomes") for prefix, folder in log_roots(root) if (folder / "outcomes").is_dir()
    ]


def _outcome_entries(path: Path, prefix: str = "") -> Iterator[tuple[dict, dict, dict]]:
    """(worker/window fields, counts, by_role) of each line; a line that breaks the format raises.
    `prefix` goes before the worker, as in log_files, so a replica's counts meet its own lines."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                counts = entry["counts"]
                by_role = entry.get("by_role") or {}
                version = entry.get("version")
                base = {
                    "worker": prefix + str(entry["worker"]),
                    "window_start": str(entry["window_start"]),
                    "window_s": float(entry["window_s"]),
                    "version": version,
                }
                # Lines before versioned counts have none; the monitor then infers it (operations).
                valid = version is None or (isinstance(version, str) and 0 < len(version) <= 64)
                valid = valid and all(isinstance(n, int) and n >= 0 for n in counts.values())
                valid = valid and isinstance(by_role, dict) and all(map(_counts_ok, by_role.values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                valid = False
            if not valid:
                raise MonitorError(f"{_name(path)}: a corrupt line at line {number} (not an outcome count)")
            yield base, counts, by_role


def _outcome_rows(path: Path, prefix: str = "") -> Iterator[dict]:
    for base, counts, _ in _outcome_entries(path, prefix):
        for outcome, count in counts.items():
            yield {**base, "outcome": str(outcome), "count": count}
