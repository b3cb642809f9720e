"""pipelines/batch/scoring.py: a whole run against a stand-in model, with failures injected.

The stand-in replaces only the packaged model (bundle.read_meta and bundle.load); the reading,
the record rules, the sinks and the renames are the real ones. The real model is exercised in
tests/integration/test_batch.py.
"""

from __future__ import annotations

import gzip
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.batch import scoring
from pipelines.core.errors import DataError
from pipelines.serving import bundle

META = {
    "fields": {
        "k": {"type": "integer", "nullable": False, "minimum": 0, "maximum": 20},
        "x": {"type": "number", "nullable": True},
        "c": {"type": "string", "nullable": False, "allowed": ["a", "b"]},
    },
    "optional_fields": {"id": {"type": "integer", "nullable": False}},
    "target": "label",
    "limits": {"max_string_length": 8},
}
ROWS = "1,5,1.5,a\n2,0,,b\n3,20,-2,a\n"
GOOD = "id,k,x,c\n" + ROWS


class StandIn:
    """The model's interface as answers.answer_frame uses it; it records what it was given."""

    task = "classification"

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.classes = ["no", "yes"]
        self.meta, self.calls, self.fail_on_call = META, [], fail_on_call

    def frame_scores(self, X: pd.DataFrame) -> np.ndarray:
        self.calls.append(X)
        if len(self.calls) == self.fail_on_call:
            raise RuntimeError("injected failure in the middle of the run")
        p = (X["k"].to_numpy(dtype=float) / 20).reshape(-1, 1)
        return np.hstack([1 - p, p])


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    stand_in = StandIn()
    monkeypatch.setattr(bundle, "read_meta", lambda path: META)
    monkeypatch.setattr(bundle, "load", lambda path, threads=1: stand_in)
    return stand_in


def score(
    folder: Path, source: str, target: str, rejects: str | None = None, rows: int = 2
) -> tuple[int, int]:
    rejects = rejects or scoring.rejects_path(source, target)
    return scoring.run(str(folder / source), str(folder / target), str(folder / rejects), rows, folder)


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() if p.is_file() else b"<folder>" for p in sorted(folder.iterdir())}


# --- formats ---


def test_a_compressed_output_gets_a_compressed_rejects_file_beside_it(tmp_path: Path, model: StandIn) -> None:
    (tmp_path / "in.csv").write_text(GOOD + "4,5.0,1,a\n")
    assert score(tmp_path, "in.csv", "x.csv.gz") == (3, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "x.csv.gz", "x.rejects.csv.gz"]
    with gzip.open(tmp_path / "x.rejects.csv.gz", "rt") as handle:
        assert handle.read() == "id,k,x,c,reason\n4,5.0,1,a,k: not an integer\n"
    assert pd.read_csv(tmp_path / "x.csv.gz")["id"].tolist() == [1, 2, 3]


def test_tsv_is_read_and_written_with_tabs(tmp_path: Path, model: StandIn) -> None:
    (tmp_path / "in.tsv").write_text(GOOD.replace(",", "\t"))
    assert score(tmp_path, "in.tsv", "out.tsv") == (3, 0)
    scored = pd.read_csv(tmp_path / "out.tsv", sep="\t")
    assert list(scored.columns) == ["id", "k", "x", "c", "prediction", "probability_no", "probability_yes"]
    assert scored["k"].tolist() == [5, 0, 20]  # integers stay integers (not 5.0)


def test_an_unknown_format_is_refused_before_the_model_loads(tmp_path: Path, model: StandIn) -> None:
    (tmp_path / "in.csv").write_text(GOOD)
    for source, target in (("in.xlsx", "out.csv"), ("in.csv", "out.json"), ("in.csv", "out.csv.zip")):
        with pytest.raises(DataError, match="has an unknown format"):
            scoring.check_paths(str(tmp_path / source), str(tmp_path / target), str(tmp_path / "r.csv"), 10)
    assert listing(tmp_path).keys() == {"in.csv"} and model.calls == []


# --- outputs describe one run ---


def test_a_run_with_no_rejects_replaces_the_previous_rejects_file(tmp_path: Path, model: StandIn) -> None:
    (tmp_path / "in.csv").write_text(GOOD + "4,99,1,a\n")
    assert score(tmp_path, "in.csv", "out.csv") == (3, 1)
    (tmp_path / "in.csv").write_text(GOOD)
    assert score(tmp_path, "in.csv", "out.csv") == (3, 0)
    assert (tmp_path / "out.rejects.csv").read_text() == "id,k,x,c,reason\n"  # this run's: none


def test_a_failure_mid_run_leaves_every_file_as_it_was_and_no_temporary(
    tmp_path: Path, model: StandIn
) -> None:
    (tmp_path / "in.csv").write_text(GOOD + ROWS * 2 + "9,1,1,a,extra\n")  # the fifth chunk cannot be parsed
    (tmp_path / "out.csv").write_text("previous output\n")
    (tmp_path / "out.rejects.csv").write_text("previous rejects\n")
    before = listing(tmp_path)
    with pytest.raises(DataError, match=r"in\.csv' is not valid \.csv: Expected 4 fields in line 11, saw 5"):
        score(tmp_path, "in.csv", "out.csv")
    assert len(model.calls) >= 4  # it failed mid-run, after scoring
    assert listing(tmp_path) == before


def _terminated(X: pd.DataFrame) -> np.ndarray:
    os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends to stop a job
    raise AssertionError("SIGTERM did not stop the run")


def _raises(failure: type[BaseException]):
    def fail(X: pd.DataFrame) -> np.ndarray:
        raise failure("injected")

    return fail


@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        (_raises(RuntimeError), RuntimeError),
        (_raises(KeyboardInterrupt), KeyboardInterrupt),
        (_terminated, SystemExit),
    ],
    ids=["error", "ctrl-c", "sigterm"],
)
def test_any_failure_while_scoring_leaves_no_temporary_file(
    tmp_path: Path, model: StandIn, fail, expected: type[BaseException]
) -> None:
    (tmp_path / "in.csv").write_text(GOOD + ROWS * 2)
    before = listing(tmp_path)
    model.frame_scores = fail  # type: ignore[method-assign]
    with pytest.raises(expected):
        score(tmp_path, "in.csv", "out.parquet")
    assert listing(tmp_path) == before
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the run's only


def test_an_unwritable_output_folder_is_refused_before_scoring(tmp_path: Path, model: StandIn) -> None:
    (tmp_path / "in.csv").write_text(GOOD)
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError, match=r"cannot write to '.*afile'"):
        score(tmp_path, "in.csv", "afile/out.csv", rejects="r.csv")
    assert model.calls == [] and listing(tmp_path).keys() == {"afile", "in.csv"}


# --- OUT must not be IN ---


@pytest.mark.parametrize("link", ["same", "dotdot", "symlink", "hardlink", "rejects"])
def test_an_output_that_is_the_input_is_refused_before_any_work(
    tmp_path: Path, model: StandIn, link: str
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "in.csv").write_text(GOOD)
    target, rejects = "out.csv", "out.rejects.csv"
    if link == "same":
        target = "in.csv"
    elif link == "dotdot":
        target = "sub/../in.csv"
    elif link == "symlink":
        (tmp_path / "alias.csv").symlink_to(tmp_path / "in.csv")
        target = "alias.csv"
    elif link == "hardlink":
        os.link(tmp_path / "in.csv", tmp_path / "twin.csv")
        target = "twin.csv"
    else:
        rejects = "in.csv"
    before = listing(tmp_path)
    with pytest.raises(DataError, match="is the input file"):
        score(tmp_path, "in.csv", target, rejects=rejects)
    assert listing(tmp_path) == before and model.calls == []


def test_out_and_rejects_must_be_different_files(tmp_path: Path, model: StandIn) -> None:
    (tmp_path / "in.csv").write_text(GOOD)
    with pytest.raises(DataError, match=r"the rejects file .* is OUT"):
        score(tmp_path, "in.csv", "out.csv", rejects="out.csv")


# --- check before spending ---


def test_wrong_columns_are_refused_before_the_model_loads(tmp_path: Path, model: StandIn) -> None:
    (tmp_path / "in.csv").write_text("id,k,x,c,Secret Column\n1,5,1.5,a,zz\n")
    with pytest.raises(DataError) as error:
        score(tmp_path, "in.csv", "out.csv")
    assert str(error.value).startswith("input has columns the model does not know: column 5 of 5")
    assert "Secret" not in str(error.value) and model.calls == []
    (tmp_path / "in.csv").write_text("id,k,c\n1,5,a\n")
    with pytest.raises(DataError, match="input lacks model inputs: x"):
        score(tmp_path, "in.csv", "out.csv")


def test_columns_must_be_the_model_inputs_plus_passthrough() -> None:
    fields = {"a": {"type": "number", "nullable": False}, "b": {"type": "string", "nullable": True}}
    scoring.check_columns(["a", "b", "id"], fields, passthrough={"id"})
    with pytest.raises(DataError, match="lacks model inputs: b"):
        scoring.check_columns(["a", "id"], fields, passthrough={"id"})
    with pytest.raises(DataError, match="does not know: column 3 of 3"):
        scoring.check_columns(["a", "b", "extra"], fields, passthrough=set())


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        (lambda d: None, "'{d}/nope.csv' does not exist"),
        (lambda d: (d / "nope.csv").mkdir(), "'{d}/nope.csv' is not a file"),
        (lambda d: None, "--chunk-rows must be at least 1"),
    ],
)
def test_the_input_is_checked_before_anything_else(tmp_path: Path, setup, problem: str) -> None:
    setup(tmp_path)
    rows = 0 if "chunk" in problem else 10
    source = str(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=problem.format(d=tmp_path).replace(".", r"\.")):
        scoring.check_paths(source, str(tmp_path / "o.csv"), str(tmp_path / "r.csv"), rows)


# --- the service's record rules, on file cells ---


def test_csv_cells_get_the_services_strict_types(tmp_path: Path, model: StandIn) -> None:
    rows = [
        "1,5,1.5,a",
        "2,5.0,1,a",
        "3,true,1,a",
        "4,5,true,a",
        "5,5,inf,a",
        "6,5,1e400,a",
        "7,5,1,z",
        "8,,1,a",
    ]
    (tmp_path / "in.csv").write_text("id,k,x,c\n" + "\n".join(rows) + "\n")
    assert score(tmp_path, "in.csv", "out.csv", rows=100) == (1, 7)
    reasons = pd.read_csv(tmp_path / "out.rejects.csv").set_index("id")["reason"].to_dict()
    assert reasons == {
        2: "k: not an integer",
        3: "k: not an integer",
        4: "x: not a number",
        5: "x: not a number",
        6: "x: not a finite number",
        7: "c: not an allowed value",
        8: "k: missing, and the contract says not nullable",
    }
    (X,) = model.calls
    assert X["k"].dtype == "float64" and X["x"].tolist() == [1.5]  # the model gets numbers


def test_parquet_columns_keep_their_types_and_the_rules_judge_them(tmp_path: Path, model: StandIn) -> None:
    frame = pd.DataFrame(
        {"id": pd.array([1, None], dtype="Int64"), "k": ["5", "6"], "x": [1.5, None], "c": ["a", "b"]}
    )
    frame.to_parquet(tmp_path / "in.parquet")  # k is a string column: "5" is not an integer
    assert score(tmp_path, "in.parquet", "out.parquet") == (0, 2)
    rejects = pd.read_parquet(tmp_path / "out.rejects.parquet")
    assert rejects["reason"].tolist() == ["k: not an integer"] * 2
    assert list(pd.read_parquet(tmp_path / "out.parquet").columns)[-3:] == [
        "prediction",
        "probability_no",
        "probability_yes",
    ]
