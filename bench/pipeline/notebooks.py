"""Executed notebooks: which stage a report belongs to, the pipeline's stage order, and papermill's
own per-notebook and per-cell durations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Validation happens inside `ingest`; the train@<candidate> stages and `compare` follow `split`.
STAGE_ORDER = ["ingest", "explore", "split"]


def stage_of_report(report: str) -> str:
    """reports/train-hgb.ipynb -> train@hgb; reports/split.ipynb -> split."""
    stem = Path(report).stem
    return stem.replace("train-", "train@", 1) if stem.startswith("train-") else stem


def stage_order(name: str) -> tuple[int, str]:
    """Pipeline order: the known early stages, then train@..., then the rest (compare)."""
    if name in STAGE_ORDER:
        return (STAGE_ORDER.index(name), name)
    return (len(STAGE_ORDER) + (0 if name.startswith("train") else 1), name)


def cell_label(cell: dict[str, Any]) -> str:
    """The first line of a code cell that does something (not a comment, not an import)."""
    if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
        return "[injected parameters]"
    source = "".join(cell["source"]).strip()
    lines = [ln for ln in source.splitlines() if ln.strip() and not ln.startswith("#")]
    plain = [ln for ln in lines if not ln.startswith(("import ", "from "))]
    return (plain or lines or [""])[0][:70]


def notebook_timings(path: Path) -> dict[str, Any]:
    """Papermill's duration of an executed notebook, and each code cell's duration and status."""
    nb = json.loads(path.read_text())
    meta = nb.get("metadata", {}).get("papermill", {})
    cells = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        pm = cell.get("metadata", {}).get("papermill", {})
        cells.append(
            {
                "index": index,
                "label": cell_label(cell),
                "duration_s": pm.get("duration"),
                "status": pm.get("status"),
            }
        )
    return {"duration_s": meta.get("duration"), "cells": cells}


def report_timings(project: Path) -> dict[str, Any]:
    """Per stage: papermill's duration of the executed notebook in reports/, and its cells."""
    out = {}
    for path in sorted((project / "reports").glob("*.ipynb")):
        try:
            out[stage_of_report(str(path))] = notebook_timings(path)
        except (json.JSONDecodeError, KeyError):
            continue
    return out
