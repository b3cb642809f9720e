"""Data quality of a window against the reference and the contract: unseen categories, null rates,
values outside the training range. Each finding carries counts and up to `examples` request ids,
never the values themselves: a report must not echo what callers sent.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

REQUEST_ID = "request_id"


def example_ids(request_ids: pd.Series, mask: pd.Series, examples: int) -> list[str]:
    """The first `examples` distinct request ids where `mask` holds, in log order."""
    if examples <= 0:
        return []
    return [str(v) for v in request_ids[mask.to_numpy()].drop_duplicates().head(examples)]


def unseen_categories(column: pd.Series, ref: dict[str, Any]) -> pd.Series:
    """Values training never saw (the contract may allow more than training held)."""
    seen = set(ref["frequencies"])
    return column.notna() & ~column.astype(str).isin(seen)


def out_of_range(column: pd.Series, ref: dict[str, Any]) -> pd.Series:
    """Numbers outside training's [min, max]; a value that is not a number at all counts too."""
    values = pd.to_numeric(column, errors="coerce")
    if "min" not in ref:
        return column.notna()
    return column.notna() & ~values.between(ref["min"], ref["max"])


def null_finding(column: pd.Series, ref: dict[str, Any], null_tolerance: float) -> dict[str, Any]:
    """Nulls where the contract forbids them, or a null rate above training's by more than the tolerance."""
    rate = float(column.isna().mean()) if len(column) else 0.0
    allowed = ref["null_rate"] + null_tolerance if ref["nullable"] else 0.0
    return {
        "rate": rate,
        "reference_rate": ref["null_rate"],
        "nullable": ref["nullable"],
        "flagged": rate > allowed,
    }


def quality_report(
    window: pd.DataFrame, reference: dict[str, Any], *, null_tolerance: float, examples: int
) -> dict[str, Any]:
    """Per feature column: null counts and rate, unseen categories (categorical) or values outside
    training's range (numeric), each with a count and example request ids. `window` holds the
    reference's feature columns and a `request_id` column."""
    if REQUEST_ID not in window.columns:
        raise ValueError("the window has no request_id column")
    ids = window[REQUEST_ID]
    columns: dict[str, Any] = {}
    for name, ref in reference["columns"].items():
        if name not in window.columns:
            columns[name] = {"missing_column": True, "rows": len(window)}
            continue
        column = window[name]
        nulls = column.isna()
        finding: dict[str, Any] = {"rows": len(window), "nulls": int(nulls.sum())}
        finding["null_rate"] = null_finding(column, ref, null_tolerance)
        finding["null_examples"] = (
            example_ids(ids, nulls, examples) if finding["null_rate"]["flagged"] else []
        )
        key, mask = (
            ("unseen_categories", unseen_categories(column, ref))
            if ref["kind"] == "categorical"
            else ("out_of_range", out_of_range(column, ref))
        )
        finding[key] = {"count": int(mask.sum()), "examples": example_ids(ids, mask, examples)}
        columns[name] = finding
    return {"rows": len(window), "columns": columns, "issues": issues(columns)}


def issues(columns: dict[str, Any]) -> list[dict[str, Any]]:
    """One plain entry per problem found, for alerts: column, kind, count and example ids."""
    found = []
    for name, finding in columns.items():
        if finding.get("missing_column"):
            found.append({"column": name, "kind": "missing_column", "count": finding["rows"], "examples": []})
            continue
        if finding["null_rate"]["flagged"]:
            found.append(
                {
                    "column": name,
                    "kind": "nulls",
                    "count": finding["nulls"],
                    "examples": finding["null_examples"],
                }
            )
        for kind in ("unseen_categories", "out_of_range"):
            if kind in finding and finding[kind]["count"]:
                found.append({"column": name, "kind": kind} | finding[kind])
    return found
