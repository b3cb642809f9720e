"""Id columns (`data.ignore`) in the data contract: typed, but never bounded by the ids seen so far.

A new customer's id lies beyond the training ids by design. A range learned from them refused it
in the service (422) and in batch scoring, though no model ever reads an id.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from pipelines.core.errors import ContractViolation
from pipelines.data import contract
from pipelines.serving import schema as record_rules

INFER = {"max_categories": 5, "null_tolerance": 0.05}
NEW_ID = 10**12  # far above any training id


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "number": range(1000, 1020),  # an integer id
            "code": ["a", "b", "c"] * 6 + ["a", "b"],  # a text id with few values: a list would be learned
            "age": range(18, 38),
            "y": ["yes", "no"] * 10,
        }
    )


def rules(schema, column: str) -> list[str]:
    return [check.name for check in schema.columns[column].checks]


def test_an_inferred_id_column_is_typed_with_no_range_and_no_allowed_values(frame: pd.DataFrame) -> None:
    unmarked = contract.infer_contract(frame, "y", **INFER)
    assert rules(unmarked, "number") == ["in_range"] and rules(unmarked, "code") == ["isin"]  # the premise
    marked = contract.infer_contract(frame, "y", **INFER, ids=["number", "code"])
    assert rules(marked, "number") == [] and rules(marked, "code") == []
    assert str(marked.columns["number"].dtype) == "int64" and "str" in str(marked.columns["code"].dtype)
    assert rules(marked, "age") == ["in_range"]  # features keep their learned range

    newer = frame.assign(number=frame["number"] + NEW_ID, code="z")
    assert contract.check_frame(newer, marked).soft_issues == []
    with pytest.raises(ContractViolation, match="'number': wrong type"):
        contract.check_frame(frame.assign(number=frame["number"].astype(str)), marked)


def test_load_or_infer_saves_ids_without_a_range(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "contract.yaml"
    contract.load_or_infer(path, frame, "y", INFER, ids=["number"])
    loaded = contract.load_contract(path)
    assert rules(loaded, "number") == [] and str(loaded.columns["number"].dtype) == "int64"
    assert rules(loaded, "age") == ["in_range"]


def test_an_id_spec_accepts_any_value_of_its_type_even_from_an_old_contract(frame: pd.DataFrame) -> None:
    """A contract inferred before ids were told apart still holds a range for the id: the id's
    spec, which the service and batch scoring enforce, leaves it out."""
    old = contract.infer_contract(frame, "y", **INFER)
    assert contract.field_specs(old, ["number"])["number"]["maximum"] == 1019  # the premise
    specs = contract.id_specs(old, ["number", "code"])
    assert specs == {
        "number": {"type": "integer", "nullable": False},
        "code": {"type": "string", "nullable": False},
    }

    fields = contract.field_specs(old, ["age"])
    record = record_rules.record_model(fields, specs, max_string_length=16)
    record.model_validate({"age": 20, "number": NEW_ID, "code": "zz"})
    with pytest.raises(ValidationError):
        record.model_validate({"age": 20, "number": "1"})  # still typed
    rows = pd.DataFrame({"age": [20, 20], "number": [NEW_ID, 5], "code": ["zz", "a"]})
    assert record_rules.row_problems(rows, {**fields, **specs}, max_string_length=16).isna().all()
    # The same id against the learned range, as before the fix: refused.
    bounded = record_rules.record_model(fields, contract.field_specs(old, ["number"]), max_string_length=16)
    with pytest.raises(ValidationError):
        bounded.model_validate({"age": 20, "number": NEW_ID})
