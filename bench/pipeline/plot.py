"""The scaling plot: time and peak memory against rows, from a saved results JSON.

    .venv/bin/python -m bench.pipeline.plot bench/results/pipeline-<stamp>.json [out.png]

Log-log, so linear cost is a line of slope 1 (drawn dotted through the next-to-largest size).
Left: the whole `dvc repro -f` and each stage (papermill seconds). Right: the peak RSS of the whole
process tree, and the data's in-memory size when the run recorded it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .analysis import analyse_scaling
from .env import MB


def plot_scaling(scaling: dict[str, Any], out: Path, title: str = "") -> Path:
    analysis = scaling.get("analysis") or analyse_scaling(scaling)
    totals = [row for row in analysis["totals"] if row["finished"]]
    if not totals:
        raise ValueError("no finished size to plot")
    rows = [row["rows"] for row in totals]
    factors = [str(row["factor"]) for row in totals]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    wall = [row["wall_s"] for row in totals]
    left.plot(rows, wall, "o-", color="black", linewidth=2, label="dvc repro -f (wall)")
    # Through the next-to-largest size: the target compares time per row at 1,000x with 100x.
    at = max(len(rows) - 2, 0)
    left.plot(
        rows,
        [wall[at] * r / rows[at] for r in rows],
        ":",
        color="grey",
        label=f"linear through x{factors[at]}",
    )
    for stage, by in analysis["stages"].items():
        points = [(r, by[f]["papermill_s"]) for r, f in zip(rows, factors, strict=True) if by.get(f)]
        points = [(r, s) for r, s in points if s]
        if points:
            left.plot(*zip(*points, strict=True), ".-", linewidth=1, label=stage)
    left.set(xscale="log", yscale="log", xlabel="rows", ylabel="seconds", title="time")
    left.legend(fontsize=7, ncol=2)
    rss = [row["peak_tree_rss_mb"] / 1024 for row in totals]
    right.plot(rows, rss, "o-", color="black", linewidth=2, label="peak RSS, process tree")
    data = [
        (r, s["data"]["memory_bytes"] / MB / 1024)
        for r, s in ((r, scaling["sizes"][f]) for r, f in zip(rows, factors, strict=True))
        if s.get("data", {}).get("memory_bytes")
    ]
    if data:
        right.plot(*zip(*data, strict=True), "s--", label="the data in memory")
        right.plot(*zip(*[(r, 4 * m) for r, m in data], strict=True), ":", label="4x the data")
    right.axhline(6, color="red", linewidth=0.8, label="6 GB")
    right.set(xscale="log", yscale="log", xlabel="rows", ylabel="GB", title="peak memory")
    right.legend(fontsize=7)
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if not args:
        print("usage: python -m bench.pipeline.plot RESULTS.json [OUT.png]", file=sys.stderr)
        return 2
    source = Path(args[0])
    saved = json.loads(source.read_text())
    if not saved.get("scaling", {}).get("sizes"):
        print(f"error: {source} has no scaling part", file=sys.stderr)
        return 1
    out = Path(args[1]) if len(args) > 1 else source.with_suffix(".png")
    machine = saved.get("machine", {})
    title = f"{source.stem}: {machine.get('cpus')} cores, {machine.get('cpu_model')}"
    print(plot_scaling(saved["scaling"], out, title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
