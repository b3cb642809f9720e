"""The files of a batch run: formats by name, chunked reads that fail in one line, atomic writes.

A CSV cell is text. It is read as the value a JSON body would carry for it, so that the service's
record rules judge it the same way: `5` is an integer, `5.0` a float, `true` a boolean; anything
else stays text, and only an empty cell is missing. A Parquet column keeps its own type.
"""

from __future__ import annotations

import bz2
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
        if fmt.kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return list(_read_csv(path, fmt, nrows=0).columns)
    except (*_READ_ERRORS, *_arrow_errors()) as exc:
        raise _unreadable(path, fmt, exc) from None


def _read_csv(path: str, fmt: Format, **options: Any) -> Any:
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
        if fmt.kind == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
                yield _arrow_to_pandas(batch)
        else:
            with _read_csv(path, fmt, chunksize=rows) as reader:
                yield from reader
    except (*_READ_ERRORS, *_arrow_errors()) as exc:
        raise _unreadable(path, fmt, exc) from None


def total_rows(path: str, fmt: Format) -> int | None:
    """For the progress bar: Parquet states it; a text file would have to be read twice."""
    if fmt.kind != "parquet":
        return None
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (*_READ_ERRORS, *_arrow_errors()) as exc:
        raise _unreadable(path, fmt, exc) from None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


class Sink:
    """Frames appended to a temporary file beside `path`; `commit` renames it over `path`.

    The temporary file exists from the start, so an unwritable folder fails before any scoring.
    `discard` (idempotent) removes it: a failed run leaves the folder as it found it.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.format = table_format(path)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
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

    def commit(self, empty: pd.DataFrame) -> None:
        """Close and rename over `path`; with no rows written, `empty` gives the header."""
        if self.columns is None:
            self.write(empty.head(0))
        self._close()
        os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result follows the umask
        os.replace(self.tmp, self.path)

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
