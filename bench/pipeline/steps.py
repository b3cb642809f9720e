"""The `steps` part: the pipeline's own functions timed one by one in one process (`worker`), in a
project copy, on the N x data of the scaling part; stops at the first size that does not finish."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .env import REPO, VENV_BIN, bench_env, make_copy
from .process import finished, outcome, run
from .scale import upsampled_default


def worker_env(project: Path) -> dict[str, str]:
    """bench_env, plus the real project last on PYTHONPATH: the copy has no bench/, and `pipelines`
    still resolves to the copy, which comes first (the worker checks that)."""
    env = bench_env(project)
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}{os.pathsep}{REPO}"
    return env


def part_steps(
    result: dict[str, Any],
    work: Path,
    logs: Path,
    sizes: list[int],
    timeout: float,
    reduced: bool,
    save: Callable[[], None],
) -> None:
    """Fills `result` size by size, calling `save` after each, so a long run keeps what it has."""
    project = make_copy(work / "steps")
    result.update({"reduced_params": reduced, "sizes": {}})
    for factor in sizes:
        data, info = upsampled_default(work, factor)
        out = logs / f"steps-x{factor}.jsonl"
        out.unlink(missing_ok=True)
        print(f"  steps x{factor}: {info['rows']:,} rows, timeout {timeout:.0f} s ...", flush=True)
        res = run(
            [
                str(VENV_BIN / "python"),
                "-m",
                "bench.pipeline.worker",
                str(data),
                str(out),
                "reduced" if reduced else "default",
            ],
            project,
            env=worker_env(project),
            log=logs / f"steps-x{factor}.log",
            timeout=timeout,
            monitor=0.5,
            wait=True,
        )
        res["rows"] = info["rows"]
        res["finished"] = finished(res)
        res["steps"] = [json.loads(ln) for ln in out.read_text().splitlines()] if out.exists() else []
        print(
            f"  steps x{factor}: {outcome(res)} in {res['wall_s']:.0f} s ({len(res['steps'])} steps),"
            f" other load {res['other_load_cores']:.2f} cores",
            flush=True,
        )
        result["sizes"][str(factor)] = res
        save()
        if not res["finished"]:
            break  # larger sizes would not finish either
    shutil.rmtree(project, ignore_errors=True)
