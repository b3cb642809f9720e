"""The data contract: a pandera schema inferred once from good data, kept as editable YAML.

Hard rules (dtype, nullability, ranges, the column set, a non-empty table) stop the pipeline.
Soft rules (allowed categories, a column's share of missing values) carry `raise_warning: true`
in the YAML and only reach the validation report. Edit that flag to move a rule between the two.

Id columns (`data.ignore`) get a type and nullability but no range and no allowed values: the
next customer's id lies outside the ids seen so far by design, and no model reads it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.core.errors import ContractViolation, DataError
from pipelines.core.imports import hidden_modules

# pandera pulls in `pyspark.pandas` and `pyspark.sql` whenever pyspark is installed (the optional
# Spark extra), on import and again on each check registration: 0.8 s more on every command and
# every service worker, and a pandas-3 FutureWarning on stderr that breaks the one-readable-line
# error contract. No contract here validates a Spark frame, so pyspark stays hidden from pandera;
# it catches the ImportError and treats pyspark as absent.
with hidden_modules("pyspark", "pyspark.pandas", "pyspark.sql"):
    import pandera.pandas as pa
    from pandera import extensions
    from pandera.errors import SchemaErrors, SchemaWarning

_HEADER = """\
# Data contract (pandera schema). Inferred from the first good snapshot, then owned by people:
# edit types, nullability, ranges and allowed values here. Checks with `raise_warning: true` are
# soft: they go into the validation report instead of stopping the pipeline.
"""


with hidden_modules("pyspark", "pyspark.pandas", "pyspark.sql"):

    @extensions.register_check_method(statistics=["max_share"], check_type="vectorized")
    def missing_share_at_most(series: pd.Series, *, max_share: float) -> bool:
        """The column's share of missing values stays within `max_share`."""
        return bool(series.isna().mean() <= max_share)

    @extensions.register_check_method(statistics=["min_rows"], check_type="vectorized")
    def rows_at_least(frame: pd.DataFrame, *, min_rows: int) -> bool:
        return len(frame) >= min_rows


@dataclass(frozen=True)
class ValidationResult:
    rows: int
    columns: int
    soft_issues: list[str] = field(default_factory=list)


def _dtype_name(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int64"
    if pd.api.types.is_float_dtype(series):
        return "float64"
    if pd.api.types.is_numeric_dtype(series):
        return str(series.dtype)
    return "str"


def _value_checks(dtype: str, values: pd.Series, max_categories: int) -> list[pa.Check]:
    """What good data says a value may be: a number's range, or a short list of categories."""
    if dtype in ("int64", "float64") and len(values):
        return [pa.Check.in_range(_plain(values.min()), _plain(values.max()))]
    if dtype == "str" and 0 < values.nunique() <= max_categories:
        return [pa.Check.isin(sorted(map(str, values.unique())), raise_warning=True)]
    return []


def _column_contract(
    series: pd.Series, *, nullable: bool, max_categories: int, null_tolerance: float, is_id: bool = False
) -> pa.Column:
    dtype = _dtype_name(series)
    # An id gets its type alone (see the module note).
    checks = [] if is_id else _value_checks(dtype, series.dropna(), max_categories)
    if nullable:
        share = min(1.0, round(float(series.isna().mean()) + null_tolerance, 4))
        checks.append(pa.Check.missing_share_at_most(max_share=share, raise_warning=True, ignore_na=False))
    return pa.Column(dtype, checks=checks, nullable=nullable)


def _plain(value: object) -> int | float:
    """A numpy scalar as a plain number, so the YAML stays readable."""
    number = float(value)  # type: ignore[arg-type]
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def infer_contract(
    frame: pd.DataFrame,
    target: str,
    *,
    max_categories: int,
    null_tolerance: float,
    ids: Collection[str] = (),
) -> pa.DataFrameSchema:
    """Infer types, nullability, ranges and allowed categories from good data; for the `ids`
    columns, types and nullability only."""
    if frame[target].isna().any():
        raise DataError(f"target '{target}' has missing values; a contract needs a complete target")
    columns = {
        name: _column_contract(
            frame[name],
            nullable=name != target and bool(frame[name].isna().any()),
            max_categories=max_categories,
            null_tolerance=null_tolerance,
            is_id=name in ids,
        )
        for name in frame.columns
    }
    return pa.DataFrameSchema(
        columns, checks=[pa.Check.rows_at_least(min_rows=1)], strict=True, name="contract"
    )


def save_contract(schema: pa.DataFrameSchema, path: str | Path) -> None:
    from pipelines.core.files import write_text

    text = schema.to_yaml().replace("dtype: string[pyarrow]", "dtype: str")
    write_text(_HEADER + text, path)


def load_contract(path: str | Path) -> pa.DataFrameSchema:
    if not Path(path).is_file():  # pandera would try to parse the path itself as YAML
        raise DataError(f"contract '{path}' does not exist")
    try:
        return pa.DataFrameSchema.from_yaml(Path(path))
    except Exception as exc:  # pandera raises several types for a malformed file
        raise DataError(f"contract '{path}' cannot be read: {str(exc).splitlines()[0]}") from None


def describe_failure(case: dict) -> str:
    """One readable line naming the column and the rule a failure case broke."""
    column, check, value = case["column"], str(case["check"]), case["failure_case"]
    if check == "column_in_dataframe":
        return f"column '{value}' is required by the contract but missing from the data"
    if check == "column_in_schema":
        return f"column '{value}' is not in the contract (unknown column set)"
    if check.startswith("rows_at_least"):
        return "the data has no rows (rows_at_least)"
    if check.startswith("dtype("):
        expected = check[len("dtype('") : -2].replace("string[pyarrow]", "str")
        return f"column '{column}': wrong type, expected {expected}, got {value}"
    if check == "not_nullable":
        return f"column '{column}': missing values, but the contract says not nullable"
    shown = value if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return f"column '{column}': rule {check} failed, e.g. value {shown!r}"


def check_frame(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> ValidationResult:
    """Validate against the contract: raise on the first hard violation, collect soft ones."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SchemaWarning)
        try:
            schema.validate(frame, lazy=True)
        except SchemaErrors as exc:
            cases = exc.failure_cases.to_dict("records")
            more = len({(c["column"], str(c["check"])) for c in cases}) - 1
            suffix = f" (and {more} more violation(s))" if more > 0 else ""
            raise ContractViolation(describe_failure(cases[0]) + suffix) from None
    soft = [str(w.message) for w in caught if issubclass(w.category, SchemaWarning)]
    return ValidationResult(rows=len(frame), columns=frame.shape[1], soft_issues=soft)


def null_shares(frame: pd.DataFrame) -> dict[str, float]:
    return {name: round(float(share), 6) for name, share in frame.isna().mean().items()}


def load_or_infer(
    path: str | Path, frame: pd.DataFrame, target: str, params: dict, ids: Collection[str] = ()
) -> tuple[pa.DataFrameSchema, bool]:
    """The committed contract, or one inferred from this (first) data and saved to `path`."""
    if Path(path).exists():
        return load_contract(path), False
    schema = infer_contract(
        frame,
        target,
        max_categories=params["max_categories"],
        null_tolerance=params["null_tolerance"],
        ids=ids,
    )
    save_contract(schema, path)
    return schema, True


def summary(schema: pa.DataFrameSchema) -> pd.DataFrame:
    """The contract as a table a person can scan: one row per column."""
    rows = []
    for name, column in schema.columns.items():
        rules = "; ".join(
            f"{check.name}{' (soft)' if check.raise_warning else ''}" for check in column.checks
        )
        dtype = str(column.dtype).replace("string[pyarrow]", "str")
        rows.append({"column": name, "dtype": dtype, "nullable": column.nullable, "rules": rules})
    return pd.DataFrame(rows)


def report(result: ValidationResult, frame: pd.DataFrame, contract_path: str, inferred: bool) -> dict:
    return {
        "passed": True,
        "rows": result.rows,
        "columns": result.columns,
        "contract": str(contract_path),
        "contract_inferred_now": inferred,
        "soft_issues": result.soft_issues,
        "missing_share": null_shares(frame),
    }


def _spec_type(column: pa.Column) -> dict:
    dtype = str(column.dtype).replace("string[pyarrow]", "str")
    kind = {"int64": "integer", "float64": "number", "bool": "boolean"}.get(dtype, "string")
    return {"type": kind, "nullable": bool(column.nullable)}


def field_specs(schema: pa.DataFrameSchema, columns: list[str]) -> dict[str, dict]:
    """The contract of `columns` as plain JSON: what the service's request schema is built from.

    Every rule counts here, soft or not: a request is one row, refused rather than reported.
    """
    specs = {}
    for name in columns:
        column = schema.columns[name]
        spec = _spec_type(column)
        for check in column.checks:
            stats = check.statistics or {}
            if check.name == "in_range":
                spec["minimum"], spec["maximum"] = stats["min_value"], stats["max_value"]
            elif check.name == "isin":
                spec["allowed"] = list(stats["allowed_values"])
        specs[name] = spec
    return specs


def id_specs(schema: pa.DataFrameSchema, columns: list[str]) -> dict[str, dict]:
    """The id columns' contract as plain JSON: type and nullability only. A range or a list in
    the contract (one inferred before ids were told apart) is left out: it would refuse every id
    newer than the data the contract was inferred from."""
    return {name: _spec_type(schema.columns[name]) for name in columns}
