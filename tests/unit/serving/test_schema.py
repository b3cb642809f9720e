"""pipelines/serving/schema.py: one set of record rules, as a pydantic model and vectorised."""

import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from pipelines.serving import schema

FIELDS = {
    "n": {"type": "number", "nullable": True, "minimum": 0.0, "maximum": 10.0},
    "k": {"type": "integer", "nullable": False, "minimum": 0, "maximum": 5},
    "c": {"type": "string", "nullable": False, "allowed": ["a", "b"]},
    "s": {"type": "string", "nullable": True},
}


def hostile_frame():
    return pd.DataFrame(
        {
            "n": [1.0, np.nan, 11.0, -1.0, np.inf, 2.0, 3.0, 4.0, 5.0, 6.0],
            # the values as a JSON body carries them: ints, one float, one null (no conversion)
            "k": pd.Series([1, 2, 3, 6, 1, 1.5, 2, None, 3, 4], dtype=object),
            "c": ["a", "b", "a", "a", "b", "a", "z", "a", None, "b"],
            "s": ["x", None, "y", "z", "w", "v", "u", "t", "s", "r" * 99],
        }
    )


def test_vectorised_rules_refuse_exactly_what_the_request_schema_refuses():
    frame = hostile_frame()
    problems = schema.row_problems(frame, FIELDS, max_string_length=64)
    record = schema.record_model(FIELDS, {}, max_string_length=64)
    for i, row in enumerate(frame.to_dict("records")):
        row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        try:
            record(**row)
            accepted = True
        except ValidationError:
            accepted = False
        assert accepted == (problems.iloc[i] is None), (i, row, problems.iloc[i])
    assert problems.notna().sum() == 8  # rows 2..9 each break one rule
    assert problems.iloc[3] == "n: below the minimum 0.0"  # the first broken rule, in field order


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (1, True),
        (2.5, True),
        (0, True),
        (True, False),
        (False, False),
        ("1.5", False),
        ("x", False),
        ([1], False),
    ],
    ids=["int", "float", "zero", "true", "false", "numeric-string", "string", "list"],
)
def test_a_number_field_takes_json_numbers_only(value, accepted):
    """JSON as the service receives it: `true` and "1.5" are not numbers; an integer is one."""
    model = schema.request_model(schema.record_model(FIELDS, {}, max_string_length=64), max_records=10)
    body = json.dumps({"records": [{"n": value, "k": 1, "c": "a", "s": None}]})
    try:
        model.model_validate_json(body)
        ok = True
    except ValidationError:
        ok = False
    assert ok is accepted


def test_booleans_are_not_numbers_in_a_frame_either():
    frame = pd.DataFrame(
        {
            "n": pd.Series([1.0, True, 2, False], dtype=object),
            "k": [1, 1, 1, 1],
            "c": ["a"] * 4,
            "s": [None] * 4,
        }
    )
    problems = schema.row_problems(frame, FIELDS, max_string_length=64)
    assert problems.tolist() == [None, "n: not a number", None, "n: not a number"]
    as_bools = frame.assign(n=[True, False, True, False])
    assert schema.row_problems(as_bools, FIELDS, max_string_length=64).notna().all()
