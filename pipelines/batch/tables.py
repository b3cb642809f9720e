"""The files of a batch run: formats by name, chunked reads that fail in one line, atomic writes.

A name is a local path or a URL (`s3://bucket/key`, through s3fs and fsspec). S3 takes its
credentials and endpoint from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL), never from project files.

A CSV cell is text. It is read as the value a JSON body would carry for it, so that the service's
record rules judge it the same way: `5` is an integer, `5.0` a float, `true` a boolean; anything
else stays text, and only an empty cell is missing. A Parquet column keeps its own type.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd

from pipelines.core.errors import DataError

_TEXT = {".csv": ",", ".tsv": "\t"}
_COMPRESSED: dict[str, Callable[..., IO[str]]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_PANDAS_COMPRESSION = {"": None, ".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
_PARQUET = (".parquet", ".pq")
KNOWN = ".csv, .tsv (either may end .gz, .bz2 or .xz), .parquet or .pq"


def is_url(path: str) -> bool:
    """`s3://…` and other fsspec URLs; anything else is a local path."""
    return "://" in path


def filesystem(path: str) -> Any:
    """The fsspec file system of a URL. s3fs is given AWS_ENDPOINT_URL itself, so the endpoint
    does not depend on the botocore version reading that variable."""
    import fsspec

    protocol = path.split("://", 1)[0]
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a") and os.environ.get("AWS_ENDPOINT_URL"):
        options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    return fsspec.filesystem(protocol, **options)


def path_kind(path: str) -> str | None:
    """ "file", "folder" or None (absent), for a local path or a URL."""
    if not is_url(path):
        return "file" if Path(path).is_file() else "folder" if Path(path).exists() else None
    fs = filesystem(path)
    try:
        return "file" if fs.isfile(path) else "folder" if fs.isdir(path) else None
    except PermissionError:
        raise DataError(f"'{path}' cannot be read: permission denied") from None
    except Exception as exc:  # no credentials, no endpoint: botocore's many errors, one line
        raise DataError(f"'{path}' cannot be reached ({type(exc).__name__})") from None


def check_bucket(path: str) -> None:
    """An S3 output's bucket exists, checked before any scoring (the key itself is written at the end)."""
    bucket = path.split("://", 1)[1].split("/", 1)[0]
    if path_kind(path.split("://", 1)[0] + "://" + bucket) != "folder":
        raise DataError(f"cannot write to '{path}': bucket '{bucket}' does not exist")


@contextlib.contextmanager
def _opened(path: str) -> Iterator[Any]:
    """What pandas and pyarrow read: the local path itself, or an open binary file for a URL."""
    if not is_url(path):
        yield path
        return
    with filesystem(path).open(path, "rb") as handle:
        yield handle


@dataclass(frozen=True)
class Format:
    kind: str  # "text" or "parquet"
    suffix: str  # the whole format suffix as written, e.g. ".csv.gz"
    sep: str = ","
    compression: str = ""  # "", ".gz", ".bz2" or ".xz"


def table_format(path: str) -> Format:
    """The format a file's name declares; an unknown one is refused before any work."""
    name = Path(path).name
    lower = name.lower()
    for compression in ("", *_COMPRESSED):
        for suffix, sep in _TEXT.items():
            if lower.endswith(suffix + compression) and len(lower) > len(suffix + compression):
                return Format("text", name[-len(suffix + compression) :], sep, compression)
    for suffix in _PARQUET:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return Format("parquet", name[-len(suffix) :])
    raise DataError(f"'{path}' has an unknown format: name it {KNOWN}")


def rejects_name(target: str) -> str:
    """Beside the output, with `.rejects` before its whole format suffix: x.csv.gz -> x.rejects.csv.gz."""
    suffix = table_format(target).suffix
    return target[: -len(suffix)] + ".rejects" + suffix


# JSON's literals, as CSV writers spell them: an integer has no point or exponent.
_INTEGER = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_BOOLEAN = {"true": True, "false": False}


def _literal(text: Any) -> Any:
    if not isinstance(text, str) or not text:
        return None  # an empty cell
    if _INTEGER.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)  # 1e400 becomes inf, which the rules refuse as JSON's 1e400 is refused
    return _BOOLEAN.get(text.lower(), text)


def _numbers(column: pd.Series, dtype: str) -> pd.Series:
    """Text already known to be numbers, converted: Arrow's cast, or pandas' parser for what it
    does not take (a leading +)."""
    try:
        return column.astype(dtype)
    except (ValueError, TypeError):
        return pd.to_numeric(column).astype(dtype)


def literal_values(column: pd.Series, kind: str = "") -> pd.Series:
    """CSV text cells as JSON values: int, float, bool, str, or None if empty.

    A clean column comes back in a plain dtype (Int64 when every cell is an integer, float64 for
    a `number` field whose cells are all numbers), which judges every cell as the object form
    would; otherwise object, one value per cell, so 5 and 5.0 stay apart for an integer field.
    """
    present = column.notna()
    text = column[present].astype(str)
    integers = text.str.fullmatch(_INTEGER.pattern)
    try:
        if integers.all():
            return _numbers(column, "Int64")
        if kind == "number" and (integers | text.str.fullmatch(_FLOAT.pattern)).all():
            return _numbers(column, "float64")
    except (OverflowError, ValueError, TypeError):  # past int64: judged one by one below
        pass
    # Built as object directly: Series.map would infer a dtype, and make 5 and 5.0 one float again.
    return pd.Series([_literal(v) for v in column.tolist()], index=column.index, dtype=object)


def text_cells(frame: pd.DataFrame, typed: dict[str, str]) -> pd.DataFrame:
    """A chunk read as text, with the `typed` columns ({name: contract type}) read as literals."""
    return frame.assign(
        **{name: literal_values(frame[name], kind) for name, kind in typed.items() if name in frame}
    )


def _unreadable(path: str, fmt: Format, exc: BaseException) -> DataError:
    """One line naming the file and the problem; never the library's text, which may quote cells."""
    if isinstance(exc, FileNotFoundError):
        return DataError(f"'{path}' does not exist")
    if isinstance(exc, PermissionError):
        return DataError(f"'{path}' cannot be read: permission denied")
    if isinstance(exc, pd.errors.EmptyDataError):
        return DataError(f"'{path}' is empty")
    if isinstance(exc, UnicodeDecodeError):
        return DataError(f"'{path}' is not UTF-8 text")
    if fmt.compression and isinstance(exc, (OSError, EOFError, lzma.LZMAError)):
        return DataError(f"'{path}' is not valid {fmt.compression} data (damaged or cut short)")
    if isinstance(exc, pd.errors.ParserError):
        where = re.search(r"Expected \d+ fields in line \d+, saw \d+", str(exc))
        return DataError(
            f"'{path}' is not valid {fmt.suffix}: {where.group(0) if where else 'malformed rows'}"
        )
    if fmt.kind == "parquet":
        return DataError(f"'{path}' is not a valid Parquet file (damaged, cut short, or another format)")
    return DataError(f"'{path}' cannot be read as {fmt.suffix}")


_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    pd.errors.ParserError,
    pd.errors.EmptyDataError,
    lzma.LZMAError,
)


def _arrow_errors() -> tuple[type[BaseException], ...]:
    import pyarrow as pa

    return (pa.ArrowException,)


def columns(path: str, fmt: Format) -> list[str]:
    """The header (or schema) alone, so a wrong column set is refused before scoring starts."""
    try:
        with _opened(path) as source:
            if fmt.kind == "parquet":
                import pyarrow.parquet as pq

                return list(pq.read_schema(source).names)
            return list(_read_csv(source, fmt, nrows=0).columns)
    except (*_READ_ERRORS, *_arrow_errors()) as exc:
        raise _unreadable(path, fmt, exc) from None


def _read_csv(path: Any, fmt: Format, **options: Any) -> Any:
    """Every cell as text; only an empty cell is missing ("NA" or "null" is text, as in JSON)."""
    return pd.read_csv(
        path,
        sep=fmt.sep,
        dtype=str,
        keep_default_na=False,
        na_values=[""],
        compression=_PANDAS_COMPRESSION[fmt.compression],
        **options,
    )


def _arrow_to_pandas(batch: Any) -> pd.DataFrame:
    """Integers stay integers when a column has nulls (plain to_pandas would make them floats)."""
    import pyarrow as pa

    def mapper(arrow_type: Any) -> Any:
        if pa.types.is_integer(arrow_type):
            return pd.Int64Dtype()
        if pa.types.is_boolean(arrow_type):
            return pd.BooleanDtype()
        return None

    return batch.to_pandas(types_mapper=mapper)


def chunks(path: str, fmt: Format, rows: int) -> Iterator[pd.DataFrame]:
    """The file in chunks of `rows`; any read or parse error is one DataError naming the file."""
    try:
        with _opened(path) as source:
            if fmt.kind == "parquet":
                import pyarrow.parquet as pq

                for batch in pq.ParquetFile(source).iter_batches(batch_size=rows):
                    yield _arrow_to_pandas(batch)
            else:
                with _read_csv(source, fmt, chunksize=rows) as reader:
                    yield from reader
    except (*_READ_ERRORS, *_arrow_errors()) as exc:
        raise _unreadable(path, fmt, exc) from None


def total_rows(path: str, fmt: Format) -> int | None:
    """For the progress bar: Parquet states it; a text file would have to be read twice."""
    if fmt.kind != "parquet":
        return None
    import pyarrow.parquet as pq

    try:
        with _opened(path) as source:
            return pq.ParquetFile(source).metadata.num_rows
    except (*_READ_ERRORS, *_arrow_errors()) as exc:
        raise _unreadable(path, fmt, exc) from None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


class Sink:
    """Frames appended to a temporary file; `commit` puts it under `path` in one step.

    A local temporary file lies beside `path` and exists from the start, so an unwritable folder
    fails before any scoring; it is renamed over `path`. For a URL the temporary file is local;
    `stage` uploads it to a temporary key beside `path` and `publish` moves it there, so a run
    with two outputs uploads both before either appears. `discard` (idempotent) removes what is
    left: a failed run leaves the folder, or the bucket, as it found them.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.url = is_url(path)
        self.format = table_format(path)
        name = path.rsplit("/", 1)[-1]
        folder = None if self.url else Path(path).parent
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        self.staged: str | None = None  # the temporary key of a URL, once uploaded
        self.handle: IO[str] | None = None
        self.writer: Any = None
        self.rows = 0
        self.columns: list[str] | None = None

    def write(self, frame: pd.DataFrame) -> None:
        if self.format.kind == "text":
            if self.handle is None:
                opener = _COMPRESSED.get(self.format.compression, open)
                self.handle = opener(self.tmp, "wt", newline="")
            frame.to_csv(self.handle, sep=self.format.sep, header=self.columns is None, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.tmp, table.schema)
            self.writer.write_table(table.cast(self.writer.schema))
        self.columns = self.columns or list(frame.columns)
        self.rows += len(frame)

    def stage(self, empty: pd.DataFrame) -> None:
        """Close the file (with no rows written, `empty` gives the header); upload a URL's."""
        if self.columns is None:
            self.write(empty.head(0))
        self._close()
        os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result follows the umask
        if self.url:
            staged = f"{self.path}.{self.tmp.name.rsplit('.', 2)[-2]}.tmp"
            self.staged = staged
            _remote(lambda: filesystem(staged).put_file(str(self.tmp), staged), self.path)

    def publish(self) -> None:
        """The file appears under `path`: a rename, or a move of the staged key."""
        if not self.url:
            os.replace(self.tmp, self.path)
            return
        staged, self.staged = self.staged, None
        _remote(lambda: filesystem(self.path).mv(staged, self.path), self.path)
        self.tmp.unlink(missing_ok=True)

    def commit(self, empty: pd.DataFrame) -> None:
        """`stage` then `publish`, for a single output."""
        self.stage(empty)
        self.publish()

    def _close(self) -> None:
        handle, writer, self.handle, self.writer = self.handle, self.writer, None, None
        if handle is not None:
            handle.close()
        if writer is not None:
            writer.close()

    def discard(self) -> None:
        try:
            self._close()
        finally:
            self.tmp.unlink(missing_ok=True)
            staged, self.staged = self.staged, None
            if staged is not None:
                with contextlib.suppress(Exception):  # best effort: the failure being reported matters more
                    filesystem(staged).rm_file(staged)


def _remote(action: Callable[[], Any], path: str) -> None:
    """An S3 write as one line naming the output, never botocore's text."""
    try:
        action()
    except PermissionError:
        raise DataError(f"cannot write to '{path}': permission denied") from None
    except Exception as exc:
        raise DataError(f"cannot write to '{path}' ({type(exc).__name__})") from None
