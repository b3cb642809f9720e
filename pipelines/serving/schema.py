"""The record rules: one set, from the data contract's field specs, rendered two ways.

`record_model` renders them as the pydantic model that validates each request; `row_problems`
renders them as vectorised checks over a frame, for batch scoring. A test checks that both refuse
exactly the same rows. `make package` writes the field specs into the model's meta.json.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model


def _field_type(spec: dict[str, Any], max_string_length: int) -> Any:
    """A pydantic type that enforces one contract column: its type, range and allowed values."""
    kind = spec["type"]
    bounds = {k: v for k, v in (("ge", spec.get("minimum")), ("le", spec.get("maximum"))) if v is not None}
    if kind == "integer":
        return Annotated[int, Field(strict=True, **bounds)]
    if kind == "number":
        return Annotated[float, Field(allow_inf_nan=False, **bounds)]
    if kind == "boolean":
        return Annotated[bool, Field(strict=True)]
    if spec.get("allowed"):
        return Literal[tuple(spec["allowed"])]
    return Annotated[str, StringConstraints(max_length=max_string_length)]


def record_model(
    fields: dict[str, dict], optional: dict[str, dict], max_string_length: int
) -> type[BaseModel]:
    """One record: every feature, required unless nullable; the optional (id) columns; no others."""
    definitions: dict[str, Any] = {}
    for name, spec in fields.items():
        kind = _field_type(spec, max_string_length)
        definitions[name] = (kind | None, None) if spec["nullable"] else (kind, ...)
    for name, spec in optional.items():
        definitions[name] = (_field_type(spec, max_string_length) | None, None)
    return create_model(
        "Record",
        __config__=ConfigDict(extra="forbid", strict=False, allow_inf_nan=False),
        **definitions,
    )


def request_model(record: type[BaseModel], max_records: int) -> type[BaseModel]:
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        records=(Annotated[list[record], Field(min_length=1, max_length=max_records)], ...),
    )


def row_problems(frame: pd.DataFrame, fields: dict[str, dict], max_string_length: int) -> pd.Series:
    """The record rules, vectorised over a frame: per row, the first problem or None."""
    problems = pd.Series([None] * len(frame), index=frame.index, dtype=object)

    def flag(mask: pd.Series, text: str) -> None:
        problems.loc[mask & problems.isna()] = text

    for name, spec in fields.items():
        column = frame[name]
        missing = column.isna()
        if not spec["nullable"]:
            flag(missing, f"{name}: missing, and the contract says not nullable")
        present = ~missing
        kind = spec["type"]
        if kind in ("integer", "number"):
            numbers = (
                pd.to_numeric(column, errors="coerce")
                if not pd.api.types.is_numeric_dtype(column)
                else column
            )
            numbers = numbers.astype("float64")
            flag(present & numbers.isna(), f"{name}: not a number")
            flag(present & np.isinf(numbers), f"{name}: not a finite number")
            if kind == "integer":
                flag(present & numbers.notna() & (numbers % 1 != 0), f"{name}: not an integer")
            if "minimum" in spec:
                flag(present & (numbers < spec["minimum"]), f"{name}: below the minimum {spec['minimum']}")
            if "maximum" in spec:
                flag(present & (numbers > spec["maximum"]), f"{name}: above the maximum {spec['maximum']}")
        elif kind == "string":
            text = column.astype("string")
            if spec.get("allowed"):
                flag(present & ~text.isin(spec["allowed"]), f"{name}: not an allowed value")
            else:
                flag(
                    present & (text.str.len() > max_string_length), f"{name}: longer than {max_string_length}"
                )
    return problems


def probe_records(fields: dict[str, dict]) -> list[dict[str, Any]]:
    """A few valid records spanning each field's range, allowed values and missing values."""
    rows = []
    for i in range(3):
        row = {}
        for name, spec in fields.items():
            if spec.get("allowed"):
                row[name] = spec["allowed"][i % len(spec["allowed"])]
            elif spec["type"] in ("integer", "number"):
                low, high = spec.get("minimum", 0), spec.get("maximum", 1)
                value = low + (high - low) * i / 2
                row[name] = round(value) if spec["type"] == "integer" else float(value)
            else:
                row[name] = "x"
            if spec["nullable"] and i == 2:
                row[name] = None
        rows.append(row)
    return rows
