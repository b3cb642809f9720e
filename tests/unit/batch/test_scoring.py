"""pipelines/batch/scoring.py: the parts of batch scoring that need no packaged model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.batch import scoring
from pipelines.core.errors import DataError

FIELDS = {"a": {"type": "number", "nullable": False}, "b": {"type": "string", "nullable": True}}


def test_rejects_go_beside_the_output_by_default() -> None:
    assert scoring.rejects_path("out/scored.parquet", "out/scored.parquet") == "out/scored.rejects.parquet"
    assert scoring.rejects_path("in.csv", "scored.csv") == "scored.rejects.csv"


def test_columns_must_be_the_model_inputs_plus_passthrough() -> None:
    scoring.check_columns(["a", "b", "id"], FIELDS, passthrough={"id"})
    with pytest.raises(DataError, match="lacks model inputs: b"):
        scoring.check_columns(["a", "id"], FIELDS, passthrough={"id"})
    with pytest.raises(DataError, match="columns the model does not know: extra"):
        scoring.check_columns(["a", "b", "extra"], FIELDS, passthrough=set())


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_sink_writes_every_frame_once_and_renames_at_the_end(tmp_path: Path, suffix: str) -> None:
    target = tmp_path / f"scored{suffix}"
    sink = scoring.Sink(str(target))
    sink.write(pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}))
    sink.write(pd.DataFrame({"a": [3.0], "b": ["z"]}))
    assert not target.exists()  # nothing at the final name until the run succeeds
    sink.close(keep=True)
    read = pd.read_csv(target) if suffix == ".csv" else pd.read_parquet(target)
    assert read.to_dict("list") == {"a": [1.0, 2.0, 3.0], "b": ["x", "y", "z"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_failed_run_leaves_no_output_and_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "scored.csv").write_text("a\n9\n")  # the previous run's output stays as it was
    sink = scoring.Sink(str(tmp_path / "scored.csv"))
    sink.write(pd.DataFrame({"a": [1.0]}))
    sink.close(keep=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored.csv"]
    assert (tmp_path / "scored.csv").read_text() == "a\n9\n"
