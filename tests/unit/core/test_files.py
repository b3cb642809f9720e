"""pipelines/dataio.py: reading tables at the edge of a stage, and atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from pipelines.core import files
from pipelines.core.errors import DataError

FRAME = pd.DataFrame({"id": ["a", "b", "c"], "x": [1.5, None, 3.0], "n": [1, 2, 3]})


def test_read_table_csv(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    FRAME.to_csv(path, index=False)
    got = files.read_table(str(path))
    assert got.shape == FRAME.shape
    assert list(got.columns) == list(FRAME.columns)
    assert got["x"].isna().sum() == 1
    assert got["n"].tolist() == [1, 2, 3]


def test_read_table_tsv_and_upper_case_suffix(tmp_path: Path) -> None:
    tsv = tmp_path / "t.tsv"
    FRAME.to_csv(tsv, index=False, sep="\t")
    assert files.read_table(str(tsv)).shape == FRAME.shape
    upper = tmp_path / "T.CSV"
    FRAME.to_csv(upper, index=False)
    assert files.read_table(str(upper)).shape == FRAME.shape


def test_read_table_parquet_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    files.write_parquet(FRAME, path)
    got = files.read_table(str(path))
    pd.testing.assert_frame_equal(got, FRAME, check_dtype=False)
    assert got["n"].dtype.kind == "i"


def test_read_table_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        files.read_table(str(path))


def test_read_table_header_only_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("id,x,n\n")
    with pytest.raises(DataError, match="has no rows"):
        files.read_table(str(path))


def test_read_table_parquet_without_rows(tmp_path: Path) -> None:
    path = tmp_path / "none.parquet"
    FRAME.iloc[0:0].to_parquet(path)
    with pytest.raises(DataError, match="has no rows"):
        files.read_table(str(path))


@pytest.mark.parametrize("name", ["missing.csv", "missing.parquet"])
def test_read_table_missing_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        files.read_table(str(tmp_path / name))
    assert name in str(info.value)


@pytest.mark.parametrize("name", ["data.xlsx", "data.json", "data"])
def test_read_table_unknown_suffix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("id\n1\n")
    with pytest.raises(DataError, match="neither CSV nor Parquet"):
        files.read_table(str(path))


def test_read_table_corrupt_parquet_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match="cannot be read as parquet") as info:
        files.read_table(str(path))
    assert "\n" not in str(info.value)


def test_table_format_ignores_query_strings() -> None:
    assert files.table_format("https://host/data.parquet?token=1") == "parquet"
    assert files.table_format("https://host/data.csv.gz?x=y") == "csv"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_json_is_sorted_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "m.json"
    files.write_json({"b": 1, "a": {"d": 2, "c": Path("x")}}, target)
    text = target.read_text()
    assert text.endswith("\n")
    assert text.index('"a"') < text.index('"b"')
    assert files.read_json(target) == {"a": {"c": "x", "d": 2}, "b": 1}
    assert _leftovers(target.parent) == []


def test_write_text_and_joblib_roundtrip(tmp_path: Path) -> None:
    import joblib

    files.write_text("hello\n", tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_text() == "hello\n"
    files.write_joblib({"k": [1, 2]}, tmp_path / "m" / "model.joblib")
    assert joblib.load(tmp_path / "m" / "model.joblib") == {"k": [1, 2]}
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "m") == []


def test_failed_write_keeps_the_previous_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "table.parquet"
    files.write_parquet(FRAME, target)
    before = target.read_bytes()
    # A column pyarrow cannot convert makes to_parquet fail midway.
    bad = pd.DataFrame({"mixed": pd.Series([1, "a", 2.5, object()], dtype=object)})
    with pytest.raises((TypeError, ValueError)):  # pyarrow's ArrowTypeError / ArrowInvalid
        files.write_parquet(bad, target)
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_failed_json_write_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    # json cannot encode a tuple key: the write fails before any file appears.
    with pytest.raises(TypeError):
        files.write_json({"bad": {("tuple", "key"): 1}}, target)
    assert not target.exists()
    assert _leftovers(tmp_path) == []


def test_atomic_writes_respect_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        files.write_json({"a": 1}, tmp_path / "m.json")
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain.json").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == expected


def test_release_arrow_memory_reports_what_arrow_still_holds():
    import pyarrow as pa

    pool = pa.default_memory_pool()
    before = pool.bytes_allocated()
    big = pa.array(["x" * 64] * 200_000)  # ~13 MB of text in Arrow buffers
    held = pool.bytes_allocated()
    assert held - before >= 12_000_000
    del big
    left = files.release_arrow_memory()
    assert left == pool.bytes_allocated() and left <= held - 12_000_000
