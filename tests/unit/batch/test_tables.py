"""pipelines/batch/tables.py: formats by name, CSV cells as JSON values, reads that fail in one line."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from pipelines.batch import tables
from pipelines.core.errors import DataError


@pytest.mark.parametrize(
    ("target", "rejects"),
    [
        ("out/x.csv.gz", "out/x.rejects.csv.gz"),
        ("x.csv", "x.rejects.csv"),
        ("x.tsv.bz2", "x.rejects.tsv.bz2"),
        ("scored.v2.parquet", "scored.v2.rejects.parquet"),
        ("X.CSV.GZ", "X.rejects.CSV.GZ"),
    ],
)
def test_the_rejects_name_keeps_the_whole_format_suffix(target: str, rejects: str) -> None:
    assert tables.rejects_name(target) == rejects


@pytest.mark.parametrize("name", ["x.xlsx", "x.txt", "x.gz", "x.csv.zip", "x.json", ".csv", "x"])
def test_an_unknown_format_is_one_line_naming_the_file(name: str) -> None:
    with pytest.raises(DataError) as error:
        tables.table_format(name)
    assert str(error.value).startswith(f"'{name}' has an unknown format: name it .csv, .tsv")


def test_tsv_is_tab_separated_and_compression_is_by_name() -> None:
    assert tables.table_format("a.tsv") == tables.Format("text", ".tsv", "\t")
    assert tables.table_format("a.csv.gz") == tables.Format("text", ".csv.gz", ",", ".gz")
    assert tables.table_format("a.pq").kind == "parquet"


def test_csv_cells_are_read_as_the_json_values_they_spell() -> None:
    cells = pd.Series(
        ["5", "5.0", "-3", "+2", "true", "False", "1.5", "1e400", ".5", "inf", "NA", "5 ", None]
    )
    values = tables.literal_values(cells).tolist()
    # written out by hand: what json.loads makes of each literal, or the text when it is not one
    assert values == [5, 5.0, -3, 2, True, False, 1.5, float("inf"), 0.5, "inf", "NA", "5 ", None]
    assert [type(v).__name__ for v in values[:5]] == ["int", "float", "int", "int", "bool"]


def test_only_an_empty_cell_is_missing_and_untyped_columns_stay_text(tmp_path: Path) -> None:
    source = tmp_path / "in.tsv"
    source.write_text("k\tnote\n5.0\tNA\n\t\n7\ta,b\n")
    (chunk,) = tables.chunks(str(source), tables.table_format(str(source)), rows=10)
    cells = tables.text_cells(chunk, typed={"k": "integer"})
    assert cells["k"].tolist() == [5.0, None, 7]
    assert cells["note"].tolist()[0::2] == ["NA", "a,b"] and pd.isna(cells["note"].iloc[1])


def test_parquet_integers_with_nulls_stay_integers(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pd.DataFrame({"k": pd.array([1, None, 3], dtype="Int64")}).to_parquet(source)
    (chunk,) = tables.chunks(str(source), tables.table_format(str(source)), rows=10)
    assert str(chunk["k"].dtype) == "Int64"


SECRET = "s3cr3t-cell"


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        (
            "bad.csv",
            f"a,b\n1,2\n3,{SECRET},4\n".encode(),
            "is not valid .csv: Expected 2 fields in line 3, saw 3",
        ),
        ("bad.csv", b"a,b\n1,\xff\xfe\n", "is not UTF-8 text"),
        ("bad.csv.gz", b"not gzip at all " + SECRET.encode(), "is not valid .gz data"),
        ("bad.parquet", b"PAR1" + SECRET.encode() * 3, "is not a valid Parquet file"),
        ("empty.csv", b"", "is empty"),
    ],
)
def test_a_read_error_is_one_line_naming_the_file_and_never_a_cell(
    tmp_path: Path, name: str, content: bytes, problem: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    fmt = tables.table_format(str(path))
    with pytest.raises(DataError) as error:
        tables.columns(str(path), fmt)
        list(tables.chunks(str(path), fmt, rows=1))
    message = str(error.value)
    assert message.startswith(f"'{path}' ") and problem in message, message
    assert SECRET not in message and "\n" not in message


def test_a_truncated_gzip_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv.gz"
    whole = gzip.compress(("a,b\n" + "1,2\n" * 5000).encode())
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"is not valid \.gz data"):
        list(tables.chunks(str(path), tables.table_format(str(path)), rows=100))


@pytest.mark.parametrize("suffix", [".csv", ".tsv.gz", ".parquet"])
def test_sink_writes_every_frame_once_and_renames_at_the_end(tmp_path: Path, suffix: str) -> None:
    target = tmp_path / f"scored{suffix}"
    sink = tables.Sink(str(target))
    sink.write(pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}))
    sink.write(pd.DataFrame({"a": [3.0], "b": ["z"]}))
    assert not target.exists()  # nothing at the final name until the run succeeds
    sink.commit(pd.DataFrame(columns=["a", "b"]))
    sink.discard()
    if suffix == ".parquet":
        read = pd.read_parquet(target)
    else:
        read = pd.read_csv(target, sep="\t" if ".tsv" in suffix else ",")
    assert read.to_dict("list") == {"a": [1.0, 2.0, 3.0], "b": ["x", "y", "z"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_an_empty_sink_commits_a_header(tmp_path: Path, suffix: str) -> None:
    target = tmp_path / f"rejects{suffix}"
    sink = tables.Sink(str(target))
    sink.commit(pd.DataFrame(columns=["a", "reason"]))
    read = pd.read_csv(target) if suffix == ".csv" else pd.read_parquet(target)
    assert list(read.columns) == ["a", "reason"] and len(read) == 0


def test_a_discarded_sink_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "scored.csv").write_text("a\n9\n")  # the previous run's output stays as it was
    sink = tables.Sink(str(tmp_path / "scored.csv"))
    sink.write(pd.DataFrame({"a": [1.0]}))
    sink.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored.csv"]
    assert (tmp_path / "scored.csv").read_text() == "a\n9\n"


@pytest.mark.parametrize(
    "cells",
    [
        ["5", "0", None, "-3"],
        ["5", "5.0", None, "1e400"],
        ["1.5", "2", "-0.5", None],
        ["99999999999999999999", "1"],
        ["5", "true", "x"],
        [None, None],
    ],
)
@pytest.mark.parametrize("kind", ["integer", "number"])
def test_a_clean_column_read_in_a_plain_dtype_is_judged_as_cell_by_cell(cells: list, kind: str) -> None:
    """The fast path (Int64/float64 for clean columns) refuses exactly what the per-cell values do."""
    from pipelines.serving import schema

    column = pd.Series(cells, dtype="str")
    fast = tables.literal_values(column, kind)
    one_by_one = pd.Series([tables._literal(v) for v in column.tolist()], dtype=object)
    spec = {"v": {"type": kind, "nullable": True}}
    judged = [schema.row_problems(pd.DataFrame({"v": v}), spec, 64).tolist() for v in (fast, one_by_one)]
    assert judged[0] == judged[1]
