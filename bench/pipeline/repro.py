"""The `full` and `noop` parts: `dvc repro -f` on the default data, per stage, and `dvc repro`
when everything is up to date."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .analysis import median_of
from .env import bench_env, dvc
from .notebooks import report_timings, stage_order
from .process import run

NOOP_TIMEOUT_S = 300


def forced_repro(project: Path, log: Path, timeout: float, monitor: float) -> dict[str, Any]:
    """`dvc repro -f` in `project`, watched: process tree, /usr/bin/time -v, idle wait first; plus
    papermill's timings of the notebooks it executed."""
    res = run(
        dvc("repro", "-f"),
        project,
        env=bench_env(project),
        log=log,
        timeout=timeout,
        monitor=monitor,
        time_v=True,
        wait=True,
    )
    res["notebooks"] = report_timings(project)
    return res


def stage_summary(ok: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage over the successful runs: median papermill and process seconds, peak RSS."""
    stages = sorted({s for r in ok for s in r["notebooks"]}, key=stage_order)
    return {
        s: {
            "papermill_s": median_of(r["notebooks"].get(s, {}).get("duration_s") for r in ok),
            "process_s": median_of(r["stages_monitored"].get(s, {}).get("wall_s") for r in ok),
            "peak_rss_mb": max(r["stages_monitored"].get(s, {}).get("peak_rss_mb", 0) for r in ok),
        }
        for s in stages
    }


def part_full(project: Path, logs: Path, runs: int, timeout: float) -> dict[str, Any]:
    """`runs` forced reproductions; stops at the first failure."""
    results = []
    for i in range(runs):
        res = forced_repro(project, logs / f"full-{i}.log", timeout, monitor=0.2)
        results.append(res)
        print(
            f"  full run {i + 1}/{runs}: {res['wall_s']:.1f} s (rc {res['returncode']};"
            f" other processes kept {res['other_load_cores']:.2f} cores busy)",
            flush=True,
        )
        if res["returncode"]:
            break
    ok = [r for r in results if r["returncode"] == 0]
    summary: dict[str, Any] = {"runs": results}
    if ok:
        summary["median_s"] = statistics.median(r["wall_s"] for r in ok)
        summary["stages"] = stage_summary(ok)
        summary["peak_tree_rss_mb"] = max(r["peak_tree_rss_mb"] for r in ok)
    return summary


def setup_repro(project: Path, logs: Path, timeout: float) -> dict[str, Any]:
    """`dvc repro` once, unmeasured, so that the noop and overhead parts find a completed pipeline."""
    return run(dvc("repro"), project, env=bench_env(project), log=logs / "setup.log", timeout=timeout)


def part_noop(project: Path, logs: Path, runs: int) -> dict[str, Any]:
    """`runs` times `dvc repro` with nothing to do; a run that ran a stage does not count."""
    env = bench_env(project)
    results = []
    for i in range(runs):
        res = run(
            dvc("repro"), project, env=env, log=logs / f"noop-{i}.log", timeout=NOOP_TIMEOUT_S, wait=i == 0
        )
        res["ran_a_stage"] = "Running stage" in Path(res["log"]).read_text()
        results.append(res)
    ok = [r["wall_s"] for r in results if r["returncode"] == 0 and not r["ran_a_stage"]]
    return {
        "runs": results,
        "median_s": statistics.median(ok) if ok else None,
        "all_up_to_date": len(ok) == len(results),
    }
