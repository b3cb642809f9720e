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
        # Strict: a JSON number only (an integer is one). Lax mode would take `true` as 1.0 and
        # the string "1.5" as 1.5, so the request would not say what the model was given.
        return Annotated[float, Field(strict=True, allow_inf_nan=False, **bounds)]
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


# What each contract type accepts, as the request model does: 5.0 is not an integer, and a
# boolean or a string is not a number (bool is a subclass of int, so it is refused by name).
_ACCEPTS: dict[str, tuple[type, ...]] = {
    "integer": (int, np.integer),
    "number": (int, float, np.integer, np.floating),
    "boolean": (bool, np.bool_),
    "string": (str,),
}
_TYPE_NAMES = {"integer": "an integer", "number": "a number", "boolean": "a boolean", "string": "a string"}


def _wrong_type(column: pd.Series, kind: str) -> pd.Series:
    """Per cell, True where the value's type is not the field's (missing cells are not judged)."""
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        fits = kind == "boolean"
    elif pd.api.types.is_integer_dtype(dtype):
        fits = kind in ("integer", "number")
    elif pd.api.types.is_float_dtype(dtype):
        fits = kind == "number"
    elif isinstance(dtype, pd.StringDtype):
        fits = kind == "string"
    else:  # object: judge each value, as a JSON body's values are judged
        accepts = _ACCEPTS[kind]
        strict = kind != "boolean"
        return column.map(
            lambda v: v is not None and not (isinstance(v, accepts) and not (strict and isinstance(v, bool)))
        ).astype(bool)
    return pd.Series(not fits, index=column.index)


def _booleans(column: pd.Series) -> pd.Series:
    """Which cells hold a boolean: all of a bool column, some of a mixed (object) one."""
    if pd.api.types.is_bool_dtype(column):
        return pd.Series(True, index=column.index)
    if column.dtype != object:
        return pd.Series(False, index=column.index)
    return column.map(lambda v: isinstance(v, bool | np.bool_)).astype(bool)


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
        flag(present & _wrong_type(column, kind), f"{name}: not {_TYPE_NAMES[kind]}")
        if kind in ("integer", "number"):
            # A boolean is not a number, in a request or in a file (pandas counts bool as numeric).
            flag(present & _booleans(column), f"{name}: not a number")
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
