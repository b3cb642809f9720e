"""pipelines/contract.py: inferring, saving and enforcing the data contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.errors import ContractViolation, DataError
from pipelines.data import contract

INFER = {"max_categories": 5, "null_tolerance": 0.05}


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"c{i:03d}" for i in range(20)],
            "age": np.arange(20) + 18,
            "income": np.r_[np.linspace(1000.0, 5000.0, 18), np.nan, np.nan],
            "plan": ["basic", "plus"] * 10,
            "score": np.linspace(0.0, 1.0, 20),
            "flag": [True, False] * 10,
            "y": ["yes", "no"] * 10,
        }
    )


@pytest.fixture
def schema(frame: pd.DataFrame):
    return contract.infer_contract(frame, "y", **INFER)


def violation(frame: pd.DataFrame, schema) -> str:
    with pytest.raises(ContractViolation) as info:
        contract.check_frame(frame, schema)
    message = str(info.value)
    assert "\n" not in message, "a violation must be reported as one line"
    return message


def test_inferred_contract_describes_the_data(schema) -> None:
    columns = schema.columns
    assert list(columns) == ["id", "age", "income", "plan", "score", "flag", "y"]
    assert str(columns["age"].dtype) == "int64" and str(columns["score"].dtype) == "float64"
    assert str(columns["flag"].dtype) == "bool"
    assert columns["income"].nullable and not columns["age"].nullable and not columns["y"].nullable
    assert schema.strict is True
    age_range = [c for c in columns["age"].checks if c.name == "in_range"]
    assert age_range and age_range[0].statistics["min_value"] == 18
    assert age_range[0].statistics["max_value"] == 37
    plan_values = [c for c in columns["plan"].checks if c.name == "isin"]
    assert plan_values and plan_values[0].raise_warning  # categories are soft
    assert not any(c.name == "isin" for c in columns["id"].checks)  # 20 ids > max_categories
    share = [c for c in columns["income"].checks if c.name == "missing_share_at_most"]
    assert share and share[0].statistics["max_share"] == pytest.approx(0.1 + 0.05)


def test_contract_roundtrips_through_yaml(tmp_path: Path, frame: pd.DataFrame, schema) -> None:
    path = tmp_path / "sub" / "contract.yaml"
    contract.save_contract(schema, path)
    text = path.read_text()
    assert text.startswith("# Data contract")
    assert "string[pyarrow]" not in text and "dtype: str" in text
    loaded = contract.load_contract(path)
    assert list(loaded.columns) == list(schema.columns)
    for name, column in schema.columns.items():
        other = loaded.columns[name]
        assert str(other.dtype) == str(column.dtype), name
        assert other.nullable == column.nullable, name
        assert [(c.name, c.raise_warning) for c in other.checks] == [
            (c.name, c.raise_warning) for c in column.checks
        ], name
    assert loaded.strict is True
    # The saved contract accepts the data it came from, with no soft issues either.
    result = contract.check_frame(frame, loaded)
    assert (result.rows, result.columns, result.soft_issues) == (20, 7, [])
    # ... and still enforces the same rules after the roundtrip.
    assert "age" in violation(frame.assign(age=frame["age"] + 100), loaded)


def test_load_or_infer_infers_once_then_loads(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "contract.yaml"
    first, inferred = contract.load_or_infer(path, frame, "y", INFER)
    assert inferred and path.is_file()
    text = path.read_text()
    # Later data with a wider range does not rewrite the committed contract.
    second, inferred_again = contract.load_or_infer(path, frame.assign(age=frame["age"] * 2), "y", INFER)
    assert not inferred_again
    assert path.read_text() == text
    assert list(second.columns) == list(first.columns)


def test_load_contract_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        contract.load_contract(tmp_path / "nope.yaml")


def test_load_contract_refuses_a_malformed_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("columns: [this is: not, a schema\n")
    with pytest.raises(DataError, match="cannot be read") as info:
        contract.load_contract(bad)
    assert "\n" not in str(info.value)


def test_target_with_missing_values_cannot_found_a_contract(frame: pd.DataFrame) -> None:
    frame.loc[0, "y"] = None
    with pytest.raises(DataError, match="target 'y' has missing values"):
        contract.infer_contract(frame, "y", **INFER)


# Hard rules: one line naming the column and the rule.


def test_wrong_type(frame: pd.DataFrame, schema) -> None:
    message = violation(frame.assign(age=frame["age"].astype(float)), schema)
    assert "'age'" in message and "wrong type" in message and "int64" in message
    message = violation(frame.assign(score=frame["score"].astype(str)), schema)
    assert "'score'" in message and "wrong type" in message and "float64" in message


def test_missing_column(frame: pd.DataFrame, schema) -> None:
    message = violation(frame.drop(columns="plan"), schema)
    assert "'plan'" in message and "missing from the data" in message


def test_unknown_column(frame: pd.DataFrame, schema) -> None:
    message = violation(frame.assign(loyalty=1), schema)
    assert "'loyalty'" in message and "not in the contract" in message


def test_out_of_range(frame: pd.DataFrame, schema) -> None:
    frame.loc[2, "age"] = 999
    message = violation(frame, schema)
    assert "'age'" in message and "in_range" in message and "999" in message


@pytest.mark.parametrize("column", ["score", "plan"])
def test_nulls_in_a_non_nullable_column(frame: pd.DataFrame, schema, column: str) -> None:
    frame.loc[3, column] = None
    message = violation(frame, schema)
    assert f"'{column}'" in message and "not nullable" in message


def test_empty_frame(frame: pd.DataFrame, schema) -> None:
    message = violation(frame.iloc[0:0], schema)
    assert "no rows" in message and "rows_at_least" in message


def test_several_violations_are_counted_on_the_one_line(frame: pd.DataFrame, schema) -> None:
    frame.loc[2, "age"] = 999
    message = violation(frame.assign(loyalty=1), schema)
    assert "1 more violation" in message


# Soft rules: reported, never raised.


def test_unseen_category_is_a_soft_issue(frame: pd.DataFrame, schema) -> None:
    frame.loc[4, "plan"] = "gold"
    result = contract.check_frame(frame, schema)
    assert len(result.soft_issues) == 1
    assert "'plan'" in result.soft_issues[0] and "gold" in result.soft_issues[0]


def test_rising_missing_share_is_a_soft_issue(frame: pd.DataFrame, schema) -> None:
    frame.loc[:9, "income"] = np.nan  # 50 % missing against a contract of 10 % + 5 %
    result = contract.check_frame(frame, schema)
    assert len(result.soft_issues) == 1
    assert "'income'" in result.soft_issues[0] and "missing_share_at_most" in result.soft_issues[0]


def test_missing_share_within_tolerance_is_fine(frame: pd.DataFrame, schema) -> None:
    frame.loc[0, "income"] = np.nan  # 15 % missing: exactly the tolerance
    assert contract.check_frame(frame, schema).soft_issues == []


def test_report_and_summary(frame: pd.DataFrame, schema) -> None:
    result = contract.check_frame(frame, schema)
    report = contract.report(result, frame, "data/contract.yaml", inferred=True)
    assert report["passed"] and report["rows"] == 20 and report["contract_inferred_now"]
    assert report["missing_share"]["income"] == pytest.approx(0.1)
    table = contract.summary(schema)
    assert table["column"].tolist() == list(frame.columns)
    plan = table.set_index("column").loc["plan"]
    assert plan["dtype"] == "str" and "isin (soft)" in plan["rules"]
