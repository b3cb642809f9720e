"""Analysis of the raw figures: medians, growth exponents (t ~ rows^k) between consecutive sizes,
and the superlinear cells (scaling part) and steps (steps part)."""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Any

from .notebooks import stage_order

SUPERLINEAR_K = 1.15  # an exponent above this is flagged, where the time is not negligible
MIN_CELL_S = 1.0  # scaling: seconds a cell takes at the larger size to be flagged
MIN_STEP_CPU_S = 0.5  # steps: CPU seconds a step takes at the larger size to be flagged


def median_of(values: Any) -> float | None:
    """The median of the values that are not None, rounded; None when there are none."""
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def exponent(t1: float | None, t2: float | None, n1: int, n2: int) -> float | None:
    """k in t ~ n^k between two sizes: 1 is linear, above 1 superlinear."""
    if not t1 or not t2 or t1 <= 0 or t2 <= 0 or n1 == n2:
        return None
    return math.log(t2 / t1) / math.log(n2 / n1)


def pairwise_exponents(seconds: dict[str, float], rows: dict[str, int]) -> dict[str, float | None]:
    """{"1->10": k, ...} between consecutive sizes (factors as strings) that have a time."""
    done = sorted(seconds, key=int)
    return {
        f"{f1}->{f2}": exponent(seconds[f1], seconds[f2], rows[f1], rows[f2])
        for f1, f2 in itertools.pairwise(done)
    }


def flagged(exponents: dict[str, float | None], seconds: dict[str, float], floor: float) -> list[tuple]:
    """(f1, f2, k) of the pairs whose exponent is superlinear where the larger size takes >= floor."""
    out = []
    for between, k in exponents.items():
        f1, f2 = between.split("->")
        if k is not None and k > SUPERLINEAR_K and seconds[f2] >= floor:
            out.append((f1, f2, k))
    return out


def _total_row(factor: str, res: dict[str, Any]) -> dict[str, Any]:
    return {
        "factor": int(factor),
        "rows": res["rows"],
        "finished": res.get("finished"),
        "wall_s": res["wall_s"],
        "peak_tree_rss_mb": res.get("peak_tree_rss_mb"),
        "max_rss_largest_process_mb": res.get("max_rss_largest_process_mb"),
        "other_load_cores": res.get("other_load_cores"),
    }


def _totals(sizes: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per size: wall time, memory, time per row against the first finished size, and the
    exponents against the previous finished size."""
    finished = [r for _, r in sizes if r.get("finished")]
    base = finished[0] if finished else None
    prev = None
    totals = []
    for factor, res in sizes:
        row = _total_row(factor, res)
        if base and res.get("finished"):
            row["time_per_row_vs_base"] = (res["wall_s"] / res["rows"]) / (base["wall_s"] / base["rows"])
            if prev is not None:
                row["time_exponent"] = exponent(prev["wall_s"], res["wall_s"], prev["rows"], res["rows"])
                row["rss_exponent"] = exponent(
                    prev.get("peak_tree_rss_mb"), res.get("peak_tree_rss_mb"), prev["rows"], res["rows"]
                )
            prev = res
        totals.append(row)
    return totals


def _stage_by_size(stage: str, sizes: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    out = {}
    for f, r in sizes:
        monitored = r.get("stages_monitored", {}).get(stage, {})
        out[f] = {
            "papermill_s": r["notebooks"].get(stage, {}).get("duration_s"),
            "process_s": monitored.get("wall_s"),
            "cpu_s": monitored.get("cpu_s"),
            "peak_rss_mb": monitored.get("peak_rss_mb"),
        }
    return out


def _cells(stage: str, sizes: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each code cell of the stage's notebook with its completed durations, by size."""
    cells: dict[int, dict[str, Any]] = {}
    for f, r in sizes:
        for cell in r["notebooks"].get(stage, {}).get("cells", []):
            entry = cells.setdefault(
                cell["index"], {"stage": stage, "cell": cell["index"], "label": cell["label"], "s": {}}
            )
            if cell["status"] == "completed" and cell["duration_s"] is not None:
                entry["s"][f] = cell["duration_s"]
    return list(cells.values())


def analyse_scaling(scaling: dict[str, Any]) -> dict[str, Any]:
    """Per size, stage and cell: time, time per row against 1x, and the growth exponent against
    the previous size. Flags cells whose exponent exceeds 1.15 where they take at least 1 s."""
    sizes = sorted(scaling["sizes"].items(), key=lambda kv: int(kv[0]))
    rows = {f: r["rows"] for f, r in sizes}
    analysis: dict[str, Any] = {"totals": _totals(sizes), "stages": {}, "cells": [], "superlinear": []}
    # stages and cells: every size that produced a notebook (a timed-out stage has none or a partial one)
    for stage in sorted({s for _, r in sizes for s in r["notebooks"]}, key=stage_order):
        analysis["stages"][stage] = _stage_by_size(stage, sizes)
        for entry in _cells(stage, sizes):
            entry["exponents"] = pairwise_exponents(entry["s"], rows)
            for f1, f2, k in flagged(entry["exponents"], entry["s"], MIN_CELL_S):
                analysis["superlinear"].append(
                    {
                        **{key: entry[key] for key in ("stage", "cell", "label")},
                        "between": f"x{f1}->x{f2}",
                        "seconds": [entry["s"][f1], entry["s"][f2]],
                        "exponent": round(k, 2),
                    }
                )
            analysis["cells"].append(entry)
    return analysis


def analyse_steps(steps: dict[str, Any]) -> dict[str, Any]:
    """Per step: CPU and wall seconds at each size, and the exponents between consecutive sizes.
    Superlinear: CPU exponent > 1.15 where the step takes >= 0.5 CPU s at the larger size."""
    sizes = sorted(steps["sizes"].items(), key=lambda kv: int(kv[0]))
    rows = {f: r["rows"] for f, r in sizes}
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for factor, res in sizes:
        for rec in res["steps"]:
            entry = table.setdefault(
                (rec["stage"], rec["step"]),
                {"stage": rec["stage"], "step": rec["step"], "cpu_s": {}, "wall_s": {}, "rss_mb": {}},
            )
            for key in ("cpu_s", "wall_s", "rss_mb"):
                entry[key][factor] = rec[key]
    superlinear = []
    for entry in table.values():
        entry["cpu_exponents"] = pairwise_exponents(entry["cpu_s"], rows)
        entry["wall_exponents"] = pairwise_exponents(entry["wall_s"], rows)
        for f1, f2, k in flagged(entry["cpu_exponents"], entry["cpu_s"], MIN_STEP_CPU_S):
            superlinear.append(
                {
                    "stage": entry["stage"],
                    "step": entry["step"],
                    "between": f"x{f1}->x{f2}",
                    "cpu_s": [entry["cpu_s"][f1], entry["cpu_s"][f2]],
                    "exponent": round(k, 2),
                }
            )
    return {"steps": list(table.values()), "superlinear": superlinear}
