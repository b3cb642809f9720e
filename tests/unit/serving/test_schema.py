"""pipelines/serving/schema.py: one set of record rules, as a pydantic model and vectorised."""

import numpy as np
import pandas as pd
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
            "k": [1, 2, 3, 6, 1, 1.5, 2, np.nan, 3, 4],
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
        if isinstance(row["k"], float) and row["k"] is not None and row["k"].is_integer():
            row["k"] = int(row["k"])
        try:
            record(**row)
            accepted = True
        except ValidationError:
            accepted = False
        assert accepted == (problems.iloc[i] is None), (i, row, problems.iloc[i])
    assert problems.notna().sum() == 8  # rows 2..9 each break one rule
    assert problems.iloc[3] == "n: below the minimum 0.0"  # the first broken rule, in field order
