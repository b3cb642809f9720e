"""Benchmark the DVC + papermill pipeline on a throwaway copy of the project.

Run from the project root (see bench/README.md):

    .venv/bin/python bench/pipeline.py                       # no-op, full, overhead, scaling 1,10,100
    .venv/bin/python bench/pipeline.py --parts scaling --sizes 1,10,100,1000 --timeout 1200

Parts, all measured on a copy of the git-tracked files (git init + commit, so DVC works; the MLflow
store and the DVC cache live inside the copy, nothing of the real project is touched):

  full      `dvc repro -f` on the default data, wall time (median of --full-runs), per stage
  noop      `dvc repro` with nothing to do (median of --noop-runs)
  overhead  per stage: the stage's own command (`python -m pipelines.core.nbrun ...`, from dvc.lock)
            against the notebook's code cells run as one plain Python script with the parameters
            injected as papermill injects them
  scaling   the default data repeated 1x, 10x, 100x, 1000x (unique ids, Parquet), full pipeline,
            wall time and peak memory of the process tree, per stage and per notebook cell

Results: a table on stdout and JSON (plus the executed notebooks of the scaling runs) in
bench/results/, which git ignores.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
RESULTS = REPO / "bench" / "results"
TARGETS = {"noop_s": 1.5, "full_s": 90.0, "overhead_s": 1.5}
# "auto": ingest, validate and split where dvc.yaml has them, and the first train@ stage
DEFAULT_OVERHEAD_STAGES = "auto"
# Scaling runs only (--scaling-params reduced): fewer trees / boosting rounds, so that 100x and
# 1000x finish on a 2-core box. The pipeline's own params.yaml is never changed.
REDUCED = {
    "random_forest": {"n_estimators": 20},
    "hist_gradient_boosting": {"max_iter": 50},
}
MB = 1024 * 1024
# Seconds to wait, before each measured command, for other processes to leave the CPUs (--wait-idle)
WAIT_IDLE = 0.0
# Extra environment of every measured command (--env KEY=VALUE), e.g. OMP_NUM_THREADS=1 for an A/B
EXTRA_ENV: dict[str, str] = {}


# --------------------------------------------------------------------------------------------
# Environment and project copies
# --------------------------------------------------------------------------------------------


def bench_env(project: Path) -> dict[str, str]:
    """The environment every measured command gets: the project's venv first on PATH, imports of
    `pipelines` resolved to the copy (the editable install points at the real project), no team
    MLflow server, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    env["PYTHONPATH"] = str(project)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(
        MLFLOW_ENABLE_TELEMETRY="false",
        DO_NOT_TRACK="true",
        BENTOML_DO_NOT_TRACK="true",
    )
    env.update(EXTRA_ENV)
    return env


def git(*args: str, cwd: Path) -> str:
    out = subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout


def make_copy(dest: Path) -> Path:
    """Copy the git-tracked files of the working tree (bench/ excepted), then git init + commit."""
    files = [f for f in git("ls-files", "-z", cwd=REPO).split("\0") if f]
    dest.mkdir(parents=True)
    for name in files:
        if name.startswith("bench/"):
            continue
        src = REPO / name
        if not src.is_file():  # deleted in the working tree
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    git("init", "-q", "-b", "main", cwd=dest)
    git("add", "-A", cwd=dest)
    git(
        "-c",
        "user.name=bench",
        "-c",
        "user.email=bench@localhost",
        "commit",
        "-q",
        "-m",
        "bench snapshot",
        cwd=dest,
    )
    return dest


def check_imports(project: Path) -> str:
    """Where `pipelines` is imported from under bench_env: it must be the copy."""
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-c", "import pipelines; print(pipelines.__file__)"],
        cwd=project,
        env=bench_env(project),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(project.resolve()):
        raise SystemExit(f"bench: pipelines imports from {out}, not from the copy {project}")
    return out


# --------------------------------------------------------------------------------------------
# Running a command: wall time, peak memory of the process tree, per-stage processes
# --------------------------------------------------------------------------------------------


class TreeMonitor(threading.Thread):
    """Polls the process tree under `pid`: the summed RSS (peak), and each stage process
    (`python -m pipelines.core.nbrun ... OUT.ipynb`): when it lived, its own subtree's peak RSS
    (nbrun + its Jupyter kernel) and the CPU seconds that subtree used. CPU time is much less
    disturbed than wall time by other processes on a shared box (OpenMP spin-waiting aside)."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.done = threading.Event()
        self.peak_tree_rss = 0
        self.stages: dict[str, dict[str, float]] = {}
        self._labels: dict[int, str | None] = {}

    def _label(self, proc: psutil.Process) -> str | None:
        if proc.pid not in self._labels:
            try:
                cmd = proc.cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                return None
            label = None
            if "pipelines.core.nbrun" in cmd:
                i = cmd.index("pipelines.core.nbrun")
                if len(cmd) > i + 2:
                    label = stage_of_report(cmd[i + 2])
            self._labels[proc.pid] = label
        return self._labels[proc.pid]

    def run(self) -> None:
        while not self.done.is_set():
            now = time.time()
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            rss: dict[int, int] = {}
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    rss[proc.pid] = proc.memory_info().rss
            self.peak_tree_rss = max(self.peak_tree_rss, sum(rss.values()))
            for proc in procs:
                label = self._label(proc)
                if label is None or proc.pid not in rss:
                    continue
                try:
                    kids = proc.children(recursive=True)
                    sub = rss[proc.pid] + sum(rss.get(c.pid, 0) for c in kids)
                    started = proc.create_time()
                    t = proc.cpu_times()
                    # reaped children (the finished kernel) move into children_user/system
                    cpu = t.user + t.system + t.children_user + t.children_system
                    for kid in kids:
                        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                            k = kid.cpu_times()
                            cpu += k.user + k.system
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    continue
                stage = self.stages.setdefault(
                    label, {"start": started, "end": now, "peak_rss_mb": 0.0, "cpu_s": 0.0}
                )
                stage["end"] = now
                stage["peak_rss_mb"] = max(stage["peak_rss_mb"], sub / MB)
                stage["cpu_s"] = max(stage["cpu_s"], cpu)
            self.done.wait(self.interval)


def stage_of_report(report: str) -> str:
    """reports/train-hgb.ipynb -> train@hgb; reports/split.ipynb -> split."""
    stem = Path(report).stem
    return stem.replace("train-", "train@", 1) if stem.startswith("train-") else stem


def kill_tree(pid: int) -> None:
    """Kill the process `pid` started, and its descendants (Jupyter kernels run in their own
    session, so a process-group kill would miss them), each by its id."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


def cpu_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def own_cpu_s() -> float:
    """CPU seconds of this process and of its waited-for descendants."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def other_load(seconds: float = 3.0) -> float:
    """Cores kept busy by processes that are not ours, averaged over `seconds`."""
    b0, o0 = cpu_busy_s(), own_cpu_s()
    time.sleep(seconds)
    return max(0.0, ((cpu_busy_s() - b0) - (own_cpu_s() - o0)) / seconds)


def wait_for_idle(max_wait: float, threshold: float = 0.3) -> dict[str, float] | None:
    """On a shared box, wait (up to `max_wait` s) until other processes use < `threshold` cores."""
    if max_wait <= 0:
        return None
    start = time.time()
    while True:
        load = other_load()
        waited = time.time() - start
        if load < threshold or waited >= max_wait:
            if load >= threshold:
                print(f"  (box still busy after {waited:.0f} s: {load:.2f} cores)", flush=True)
            return {"waited_s": round(waited, 1), "other_load_cores": round(load, 2)}
        time.sleep(5)


def run(
    cmd: list[str],
    cwd: Path,
    *,
    env: dict[str, str],
    log: Path,
    timeout: float | None = None,
    monitor: float | None = None,
    time_v: bool = False,
    wait: bool = False,
) -> dict[str, Any]:
    """Run `cmd` and time it. With `monitor`, poll the process tree every `monitor` seconds; with
    `time_v`, wrap it in /usr/bin/time -v for the kernel's view of the largest process' max RSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    time_file = log.with_suffix(".time")
    full = ["/usr/bin/time", "-v", "-o", str(time_file), *cmd] if time_v else cmd
    idle = wait_for_idle(WAIT_IDLE) if wait else None
    busy0, own0 = cpu_busy_s(), own_cpu_s()
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            full,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        mon = TreeMonitor(proc.pid, monitor) if monitor else None
        if mon:
            mon.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_tree(proc.pid)
            proc.wait()
        wall = time.perf_counter() - start
        if mon:
            mon.done.set()
            mon.join()
    own = own_cpu_s() - own0
    result: dict[str, Any] = {
        "cmd": shlex.join(cmd),
        "wall_s": round(wall, 3),
        "cpu_s": round(own, 2),
        # Cores other processes kept busy meanwhile: the box is shared (killed kernels of a
        # timed-out run are not waited for by us, so they count as other load).
        "other_load_cores": round(max(0.0, (cpu_busy_s() - busy0) - own) / wall, 2),
        "returncode": proc.returncode,
        "timed_out": timed_out,
        "log": str(log),
    }
    if idle:
        result["idle_wait"] = idle
    if mon:
        result["peak_tree_rss_mb"] = round(mon.peak_tree_rss / MB, 1)
        result["stages_monitored"] = {
            k: {
                "wall_s": round(v["end"] - v["start"], 2),
                "peak_rss_mb": round(v["peak_rss_mb"], 1),
                "cpu_s": round(v["cpu_s"], 2),
            }
            for k, v in mon.stages.items()
        }
    if time_v and time_file.exists():
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
        if found:
            result["max_rss_largest_process_mb"] = round(int(found.group(1)) / 1024, 1)
    if proc.returncode and not timed_out:
        result["log_tail"] = log.read_text()[-2000:]
    return result


# --------------------------------------------------------------------------------------------
# Executed notebooks: papermill's per-notebook and per-cell durations
# --------------------------------------------------------------------------------------------


def notebook_timings(path: Path) -> dict[str, Any]:
    nb = json.loads(path.read_text())
    meta = nb.get("metadata", {}).get("papermill", {})
    cells = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        pm = cell.get("metadata", {}).get("papermill", {})
        source = "".join(cell["source"]).strip()
        tags = cell.get("metadata", {}).get("tags", [])
        lines = [ln for ln in source.splitlines() if ln.strip() and not ln.startswith("#")]
        plain = [ln for ln in lines if not ln.startswith(("import ", "from "))]
        first = (plain or lines or [""])[0]
        cells.append(
            {
                "index": index,
                "label": "[injected parameters]" if "injected-parameters" in tags else first[:70],
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


# --------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------


def dvc(*args: str) -> list[str]:
    return [str(VENV_BIN / "dvc"), *args]


def part_full(project: Path, logs: Path, runs: int, timeout: float) -> dict[str, Any]:
    env = bench_env(project)
    results = []
    for i in range(runs):
        res = run(
            dvc("repro", "-f"),
            project,
            env=env,
            log=logs / f"full-{i}.log",
            timeout=timeout,
            monitor=0.2,
            time_v=True,
            wait=True,
        )
        res["notebooks"] = report_timings(project)
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
        stages = sorted({s for r in ok for s in r["notebooks"]}, key=stage_order)
        summary["stages"] = {
            s: {
                "papermill_s": median_of(r["notebooks"].get(s, {}).get("duration_s") for r in ok),
                "process_s": median_of(r["stages_monitored"].get(s, {}).get("wall_s") for r in ok),
                "peak_rss_mb": max(r["stages_monitored"].get(s, {}).get("peak_rss_mb", 0) for r in ok),
            }
            for s in stages
        }
        summary["peak_tree_rss_mb"] = max(r["peak_tree_rss_mb"] for r in ok)
    return summary


def part_noop(project: Path, logs: Path, runs: int) -> dict[str, Any]:
    env = bench_env(project)
    results = []
    for i in range(runs):
        res = run(dvc("repro"), project, env=env, log=logs / f"noop-{i}.log", timeout=300, wait=i == 0)
        text = Path(res["log"]).read_text()
        res["ran_a_stage"] = "Running stage" in text
        results.append(res)
    ok = [r["wall_s"] for r in results if r["returncode"] == 0 and not r["ran_a_stage"]]
    return {
        "runs": results,
        "median_s": statistics.median(ok) if ok else None,
        "all_up_to_date": len(ok) == len(results),
    }


def lock_commands(project: Path) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {name: " ".join(stage["cmd"].split()) for name, stage in lock["stages"].items()}


def nbrun_parameters(argv: list[str], project: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Input, output and the parameters papermill injects for an nbrun command line."""
    args = [a for a in argv if a != "--html"]
    i = args.index("pipelines.core.nbrun")
    notebook, output = project / args[i + 1], Path(args[i + 2])
    params: dict[str, Any] = {}
    rest = args[i + 3 :]
    for j, arg in enumerate(rest):
        if arg in ("-f", "--parameters_file"):
            params.update(yaml.safe_load((project / rest[j + 1]).read_text()))
        elif arg in ("-p", "--parameters"):
            params[rest[j + 1]] = yaml.safe_load(rest[j + 2])  # papermill reads -p values so
    params["output_notebook"] = str(output)  # nbrun adds this one
    return notebook, output, params


def notebook_as_script(notebook: Path, params: dict[str, Any]) -> str:
    """The notebook's code cells, in order, with papermill's injected cell after `parameters`."""
    nb = json.loads(notebook.read_text())
    chunks = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        chunks.append("".join(cell["source"]))
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            chunks.append(
                "# injected parameters\n" + "\n".join(f"{name} = {value!r}" for name, value in params.items())
            )
    body = "\n\n".join(chunks)
    # The body's own time, to tell it from interpreter start-up and teardown (MLflow, sklearn and
    # pandas take about a second to finalise at exit; the stage's kernel pays that too).
    return (
        "import time as _bench_time\n_bench_t0 = _bench_time.perf_counter()\n\n"
        + body
        + "\n\nprint(f'BENCH_BODY_S={_bench_time.perf_counter() - _bench_t0:.3f}')\n"
    )


HTML_TIMER = """
import json, sys, time
t0 = time.perf_counter()
from pipelines.core.nbrun import render_html
t1 = time.perf_counter()
render_html(__import__("pathlib").Path(sys.argv[1]))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "render_s": t2 - t1}))
"""


def part_overhead(project: Path, logs: Path, stages: list[str], runs: int, scripts: Path) -> dict[str, Any]:
    """Each stage's command against the same code as a plain script, alternately, `runs` times."""
    env = bench_env(project)
    commands = lock_commands(project)
    if stages == ["auto"]:
        stages = [s for s in ("ingest", "validate", "split") if s in commands]
        stages += [s for s in commands if s.startswith("train@")][:1]
    python = str(VENV_BIN / "python")
    out: dict[str, Any] = {}
    for stage in stages:
        if stage not in commands:
            print(f"  overhead: no stage {stage} in dvc.lock, skipped", flush=True)
            continue
        argv = shlex.split(commands[stage])
        notebook, output, params = nbrun_parameters(argv, project)
        script = scripts / f"{stage.replace('@', '-')}.py"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(notebook_as_script(notebook, params))
        nb_walls, py_walls, py_bodies, pm_durations, cell_sums = [], [], [], [], []
        loads: list[dict[str, Any]] = []
        for i in range(runs):
            r_nb = run(
                argv,
                project,
                env=env,
                log=logs / f"overhead-{stage}-nb-{i}.log",
                timeout=1800,
                wait=i == 0,
            )
            r_py = run(
                [python, str(script)],
                project,
                env=env,
                log=logs / f"overhead-{stage}-py-{i}.log",
                timeout=1800,
            )
            for res in (r_nb, r_py):
                if res["returncode"]:
                    raise SystemExit(f"bench: overhead run failed: {res['cmd']}\n{res.get('log_tail')}")
            loads += [r_nb, r_py]
            nb_walls.append(r_nb["wall_s"])
            py_walls.append(r_py["wall_s"])
            found = re.search(r"BENCH_BODY_S=([0-9.]+)", Path(r_py["log"]).read_text())
            py_bodies.append(float(found.group(1)) if found else None)
            timings = notebook_timings(project / output)
            pm_durations.append(timings["duration_s"])
            cell_sums.append(sum(c["duration_s"] or 0 for c in timings["cells"]))
        entry: dict[str, Any] = {
            "nbrun_s": statistics.median(nb_walls),
            "script_s": statistics.median(py_walls),
            "script_body_s": median_of(py_bodies),
            "papermill_duration_s": statistics.median(pm_durations),
            "cell_sum_s": statistics.median(cell_sums),
            "nbrun_runs_s": nb_walls,
            "script_runs_s": py_walls,
            "html": "--html" in argv,
            "other_load_cores": median_of(r["other_load_cores"] for r in loads),
        }
        entry["overhead_s"] = round(entry["nbrun_s"] - entry["script_s"], 3)
        if entry["html"]:
            timer = subprocess.run(
                [python, "-c", HTML_TIMER, str(output)],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            entry["html_render"] = json.loads(timer.stdout.strip().splitlines()[-1])
        out[stage] = entry
        print(
            f"  overhead {stage}: nbrun {entry['nbrun_s']:.2f} s, script {entry['script_s']:.2f} s,"
            f" +{entry['overhead_s']:.2f} s",
            flush=True,
        )
    return out


def upsampled(source: Path, factor: int, dest: Path) -> dict[str, Any]:
    """The source table repeated `factor` times, with unique ids, as Parquet (made once)."""
    import pandas as pd

    info_file = dest.with_suffix(".json")
    if dest.exists() and info_file.exists():
        return json.loads(info_file.read_text())
    start = time.perf_counter()
    frame = pd.read_csv(source) if source.suffix == ".csv" else pd.read_parquet(source)
    n = len(frame)
    big = frame.iloc[list(range(n)) * factor].reset_index(drop=True) if factor > 1 else frame
    if "customer_id" in big.columns:
        width = len(str(n * factor))
        big["customer_id"] = "C" + pd.Series(range(1, len(big) + 1)).astype(str).str.zfill(width)
    dest.parent.mkdir(parents=True, exist_ok=True)
    big.to_parquet(dest, index=False)
    info = {
        "rows": len(big),
        "factor": factor,
        "bytes": dest.stat().st_size,
        "make_s": round(time.perf_counter() - start, 1),
    }
    info_file.write_text(json.dumps(info))
    return info


def scaling_params(params_text: str, source: str, reduced: bool) -> tuple[str, dict[str, Any]]:
    params = yaml.safe_load(params_text)
    params["data"]["source"] = source
    changes: dict[str, Any] = {}
    if reduced:
        for name, spec in params["train"]["candidates"].items():
            for key, value in REDUCED.get(spec.get("model"), {}).items():
                old = (spec.get("params") or {}).get(key)
                if old is None or old > value:
                    spec.setdefault("params", {})[key] = value
                    changes[f"train.candidates.{name}.params.{key}"] = f"{old} -> {value}"
    return yaml.safe_dump(params, sort_keys=False), changes


def part_scaling(
    result: dict[str, Any],
    work: Path,
    logs: Path,
    out_dir: Path,
    sizes: list[int],
    timeout: float,
    reduced: bool,
    keep: bool,
    save: Any,
) -> None:
    """Fills `result` size by size, calling `save` after each, so a long run keeps what it has."""
    default_params = yaml.safe_load((REPO / "params.yaml").read_text())
    source = REPO / default_params["data"]["source"]
    result.update({"reduced_params": reduced, "sizes": {}})
    for factor in sizes:
        data = work / "data" / f"{source.stem}_x{factor}.parquet"
        info = upsampled(source, factor, data)
        project = make_copy(work / f"scale-x{factor}")
        local = Path("data/source") / data.name
        os.link(data, project / local)
        text, changes = scaling_params((project / "params.yaml").read_text(), str(local), reduced)
        (project / "params.yaml").write_text(text)
        result["param_changes"] = changes
        print(
            f"  scaling x{factor}: {info['rows']:,} rows ({info['bytes'] / MB:.1f} MB parquet),"
            f" timeout {timeout:.0f} s ...",
            flush=True,
        )
        res = run(
            dvc("repro", "-f"),
            project,
            env=bench_env(project),
            log=logs / f"scale-x{factor}.log",
            timeout=timeout,
            monitor=0.5,
            time_v=True,
            wait=True,
        )
        res["rows"] = info["rows"]
        res["data"] = info
        res["notebooks"] = report_timings(project)
        finished = res["returncode"] == 0 and not res["timed_out"]
        res["finished"] = finished
        state = "done" if finished else ("TIMED OUT" if res["timed_out"] else "FAILED")
        print(
            f"  scaling x{factor}: {state} in {res['wall_s']:.0f} s,"
            f" peak tree RSS {res.get('peak_tree_rss_mb', 0):.0f} MB,"
            f" other load {res['other_load_cores']:.2f} cores",
            flush=True,
        )
        keep_dir = out_dir / f"x{factor}"
        keep_dir.mkdir(parents=True, exist_ok=True)
        for nb in (project / "reports").glob("*.ipynb"):
            shutil.copy2(nb, keep_dir / nb.name)
        result["sizes"][str(factor)] = res
        if not keep:
            shutil.rmtree(project, ignore_errors=True)
        save()


# --------------------------------------------------------------------------------------------
# Steps: the pipeline's own functions timed one by one, in one process, on the upsampled data
# --------------------------------------------------------------------------------------------

STEPS_WORKER = "--steps-worker"


def steps_worker(data: str, out: str, reduced: str) -> int:
    """Runs inside a project copy (cwd): each stage's library calls, as the notebooks make them,
    timed (wall and CPU of this process, all threads) and appended to `out` as JSON lines, so a
    killed run keeps the steps it finished. Cross-validation is left out: it is `cv_folds` fits
    on (folds-1)/folds of the training rows, so it scales as `models.fit` does."""
    import warnings

    warnings.filterwarnings("ignore")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.data import contract
    from pipelines.core import files
    from pipelines.modeling import metrics
    from pipelines.modeling import models
    from pipelines.modeling import plots
    from pipelines.modeling import runs
    from pipelines.data import profiling as ex
    from pipelines.modeling.preprocessing import build_preprocessor
    from pipelines.data.splitting import features_and_target, split_frame

    text, _ = scaling_params(Path("params.yaml").read_text(), data, reduced == "reduced")
    params = yaml.safe_load(text)
    d, seed = params["data"], params["seed"]
    task = d["task"]
    sink = open(out, "a")  # noqa: SIM115 - kept open for the whole run, flushed per step

    def step(stage: str, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn(*args, **kwargs)
        record = {
            "stage": stage,
            "step": name,
            "wall_s": round(time.perf_counter() - wall, 3),
            "cpu_s": round(time.process_time() - cpu, 3),
            "rss_mb": round(psutil.Process().memory_info().rss / MB, 1),
        }
        sink.write(json.dumps(record) + "\n")
        sink.flush()
        return value

    tmp = Path(tempfile.mkdtemp(prefix=".bench-steps-", dir="."))
    raw = step("ingest", "dataio.read_table", files.read_table, data)
    step("ingest", "dataio.write_parquet", files.write_parquet, raw, tmp / "raw.parquet")
    schema = contract.load_contract(params["paths"]["contract"])
    result = step("ingest", "contract.check_frame", contract.check_frame, raw, schema)
    step("ingest", "contract.report", contract.report, result, raw, "contract", False)
    X, y = features_and_target(raw, d["target"], d["ignore"])
    positive = metrics.positive_label(y, d.get("positive_class")) if task == "classification" else None
    step("explore", "explore.overview", ex.overview, raw)
    step("explore", "explore.numeric_summary", ex.numeric_summary, X)
    step("explore", "explore.numeric_correlation", ex.numeric_correlation, X, y, task=task, positive=positive)
    step(
        "explore",
        "explore.category_effect",
        ex.category_effect,
        X,
        y,
        task=task,
        positive=positive,
        top=params["explore"]["top_categories"],
    )

    def histograms(frame: Any) -> None:
        numeric = frame.select_dtypes("number").columns
        frame[numeric].hist(bins=30, figsize=(12, 2.2 * ((len(numeric) + 3) // 4)), layout=(-1, 4))
        plt.close("all")

    step("explore", "DataFrame.hist (notebook cell)", histograms, X)
    train, holdout = step(
        "split",
        "split.split_frame",
        split_frame,
        raw,
        target=d["target"],
        task=task,
        holdout_size=params["split"]["holdout_size"],
        seed=seed,
    )
    del raw, X, y
    Xt, yt = features_and_target(train, d["target"], d["ignore"])
    Xh, yh = features_and_target(holdout, d["target"], d["ignore"])

    def preprocess() -> None:
        build_preprocessor(Xt, params["features"]).fit_transform(Xt)

    step("train", "features.build_preprocessor().fit_transform", preprocess)
    for name, spec in params["train"]["candidates"].items():
        stage = f"train@{name}"
        model = models.build_pipeline(
            name, spec, features=Xt, feature_params=params["features"], task=task, seed=seed
        )
        model = step(stage, "models.fit (preprocess + estimator)", models.fit, model, Xt, yt, name)
        scores = step(
            stage, "metrics.evaluate (holdout)", metrics.evaluate, model, Xh, yh, task, positive
        )
        frames = step(
            stage,
            "evaluation.plot_frames (holdout)",
            evaluation.plot_frames,
            model,
            Xh,
            yh,
            task=task,
            positive=positive,
            importance=params["evaluate"],
            seed=seed,
        )
        step(stage, "plots.figures", plots.figures, frames, scores, name)
        plt.close("all")
        step(
            stage, "plot CSVs: DataFrame.to_csv", lambda f=frames: [v.to_csv(index=False) for v in f.values()]
        )
    step("train", "tracking.file_md5 (raw snapshot)", runs.file_md5, tmp / "raw.parquet")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def part_steps(
    result: dict[str, Any],
    work: Path,
    logs: Path,
    sizes: list[int],
    timeout: float,
    reduced: bool,
    save: Any,
) -> None:
    default_params = yaml.safe_load((REPO / "params.yaml").read_text())
    source = REPO / default_params["data"]["source"]
    project = make_copy(work / "steps")
    result.update({"reduced_params": reduced, "sizes": {}})
    for factor in sizes:
        data = work / "data" / f"{source.stem}_x{factor}.parquet"
        info = upsampled(source, factor, data)
        out = logs / f"steps-x{factor}.jsonl"
        out.unlink(missing_ok=True)
        print(f"  steps x{factor}: {info['rows']:,} rows, timeout {timeout:.0f} s ...", flush=True)
        res = run(
            [
                str(VENV_BIN / "python"),
                str(Path(__file__).resolve()),
                STEPS_WORKER,
                str(data),
                str(out),
                "reduced" if reduced else "default",
            ],
            project,
            env=bench_env(project),
            log=logs / f"steps-x{factor}.log",
            timeout=timeout,
            monitor=0.5,
            wait=True,
        )
        res["rows"] = info["rows"]
        res["finished"] = res["returncode"] == 0 and not res["timed_out"]
        res["steps"] = [json.loads(ln) for ln in out.read_text().splitlines()] if out.exists() else []
        state = "done" if res["finished"] else ("TIMED OUT" if res["timed_out"] else "FAILED")
        print(
            f"  steps x{factor}: {state} in {res['wall_s']:.0f} s ({len(res['steps'])} steps),"
            f" other load {res['other_load_cores']:.2f} cores",
            flush=True,
        )
        result["sizes"][str(factor)] = res
        save()
        if not res["finished"]:
            break  # larger sizes would not finish either
    shutil.rmtree(project, ignore_errors=True)


def analyse_steps(steps: dict[str, Any]) -> dict[str, Any]:
    """Per step: CPU and wall seconds at each size, and the exponents between consecutive sizes.
    Superlinear: CPU exponent > 1.15 where the step takes >= 0.5 CPU s at the larger size."""
    sizes = sorted(steps["sizes"].items(), key=lambda kv: int(kv[0]))
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for factor, res in sizes:
        for rec in res["steps"]:
            entry = table.setdefault(
                (rec["stage"], rec["step"]),
                {"stage": rec["stage"], "step": rec["step"], "cpu_s": {}, "wall_s": {}, "rss_mb": {}},
            )
            entry["cpu_s"][factor] = rec["cpu_s"]
            entry["wall_s"][factor] = rec["wall_s"]
            entry["rss_mb"][factor] = rec["rss_mb"]
    superlinear = []
    for entry in table.values():
        done = sorted(entry["cpu_s"], key=int)
        entry["cpu_exponents"], entry["wall_exponents"] = {}, {}
        for f1, f2 in itertools.pairwise(done):
            n1, n2 = steps["sizes"][f1]["rows"], steps["sizes"][f2]["rows"]
            k_cpu = exponent(entry["cpu_s"][f1], entry["cpu_s"][f2], n1, n2)
            entry["cpu_exponents"][f"{f1}->{f2}"] = k_cpu
            entry["wall_exponents"][f"{f1}->{f2}"] = exponent(
                entry["wall_s"][f1], entry["wall_s"][f2], n1, n2
            )
            if k_cpu is not None and k_cpu > 1.15 and entry["cpu_s"][f2] >= 0.5:
                superlinear.append(
                    {
                        "stage": entry["stage"],
                        "step": entry["step"],
                        "between": f"x{f1}->x{f2}",
                        "cpu_s": [entry["cpu_s"][f1], entry["cpu_s"][f2]],
                        "exponent": round(k_cpu, 2),
                    }
                )
    return {"steps": list(table.values()), "superlinear": superlinear}


# --------------------------------------------------------------------------------------------
# Analysis and printing
# --------------------------------------------------------------------------------------------

STAGE_ORDER = ["ingest", "validate", "explore", "split"]  # then train@..., compare


def stage_order(name: str) -> tuple[int, str]:
    """Pipeline order: the known early stages, then train@..., then the rest (compare)."""
    if name in STAGE_ORDER:
        return (STAGE_ORDER.index(name), name)
    return (len(STAGE_ORDER) + (0 if name.startswith("train") else 1), name)


def median_of(values: Any) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def exponent(t1: float | None, t2: float | None, n1: int, n2: int) -> float | None:
    """k in t ~ n^k between two sizes: 1 is linear, above 1 superlinear."""
    if not t1 or not t2 or t1 <= 0 or t2 <= 0 or n1 == n2:
        return None
    return math.log(t2 / t1) / math.log(n2 / n1)


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return "PASS" if value <= target else "FAIL"


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def analyse_scaling(scaling: dict[str, Any]) -> dict[str, Any]:
    """Per size, stage and cell: time, time per row against 1x, and the growth exponent against
    the previous size. Flags cells whose exponent exceeds 1.15 where they take at least 1 s."""
    sizes = sorted(scaling["sizes"].items(), key=lambda kv: int(kv[0]))
    finished = [(f, r) for f, r in sizes if r.get("finished")]
    analysis: dict[str, Any] = {
        "totals": [],
        "stages": {},
        "cells": [],
        "superlinear": [],
    }
    base = finished[0][1] if finished else None
    prev = None
    for factor, res in sizes:
        row = {
            "factor": int(factor),
            "rows": res["rows"],
            "finished": res.get("finished"),
            "wall_s": res["wall_s"],
            "peak_tree_rss_mb": res.get("peak_tree_rss_mb"),
            "max_rss_largest_process_mb": res.get("max_rss_largest_process_mb"),
            "other_load_cores": res.get("other_load_cores"),
        }
        if base and res.get("finished"):
            row["time_per_row_vs_base"] = (res["wall_s"] / res["rows"]) / (base["wall_s"] / base["rows"])
            if prev is not None:
                row["time_exponent"] = exponent(prev["wall_s"], res["wall_s"], prev["rows"], res["rows"])
                row["rss_exponent"] = exponent(
                    prev.get("peak_tree_rss_mb"),
                    res.get("peak_tree_rss_mb"),
                    prev["rows"],
                    res["rows"],
                )
            prev = res
        analysis["totals"].append(row)
    # stages and cells: every size that produced a notebook (a timed-out stage has none or a partial one)
    stage_names = sorted({s for _, r in sizes for s in r["notebooks"]}, key=stage_order)
    for stage in stage_names:
        analysis["stages"][stage] = {
            f: {
                "papermill_s": r["notebooks"].get(stage, {}).get("duration_s"),
                "process_s": r.get("stages_monitored", {}).get(stage, {}).get("wall_s"),
                "cpu_s": r.get("stages_monitored", {}).get(stage, {}).get("cpu_s"),
                "peak_rss_mb": r.get("stages_monitored", {}).get(stage, {}).get("peak_rss_mb"),
            }
            for f, r in sizes
        }
        cells: dict[int, dict[str, Any]] = {}
        for f, r in sizes:
            for cell in r["notebooks"].get(stage, {}).get("cells", []):
                entry = cells.setdefault(
                    cell["index"],
                    {
                        "stage": stage,
                        "cell": cell["index"],
                        "label": cell["label"],
                        "s": {},
                    },
                )
                if cell["status"] == "completed" and cell["duration_s"] is not None:
                    entry["s"][f] = cell["duration_s"]
        for entry in cells.values():
            done = sorted(entry["s"].items(), key=lambda kv: int(kv[0]))
            entry["exponents"] = {}
            for (f1, t1), (f2, t2) in itertools.pairwise(done):
                n1, n2 = scaling["sizes"][f1]["rows"], scaling["sizes"][f2]["rows"]
                k = exponent(t1, t2, n1, n2)
                entry["exponents"][f"{f1}->{f2}"] = k
                if k is not None and k > 1.15 and t2 >= 1.0:
                    analysis["superlinear"].append(
                        {
                            **{k2: entry[k2] for k2 in ("stage", "cell", "label")},
                            "between": f"x{f1}->x{f2}",
                            "seconds": [t1, t2],
                            "exponent": round(k, 2),
                        }
                    )
            analysis["cells"].append(entry)
    return analysis


def print_report(res: dict[str, Any]) -> None:
    line = "-" * 100
    m = res["machine"]
    print(
        f"\n{line}\nPipeline benchmark  {res['started']}  ({m['cpus']} CPUs, {m['memory_gb']} GB,"
        f" {m['cpu_model']}; load before {m['load_before']})"
    )
    print(f"project {res['project']['head'][:10]}{' (dirty tree)' if res['project']['dirty'] else ''}")
    if res.get("extra_env"):
        print(f"extra environment of the measured commands: {res['extra_env']}")
    print(line)
    checks = []
    if "full" in res:
        full = res["full"]
        walls = ", ".join(f"{r['wall_s']:.1f}" for r in full["runs"])
        loads = ", ".join(f"{r['other_load_cores']:.2f}" for r in full["runs"])
        print(
            f"FULL `dvc repro -f`, default data, {len(full['runs'])} run(s): {walls} s"
            f"  (other processes' load meanwhile: {loads} cores)"
        )
        if "stages" in full:
            print(f"  {'stage':<14}{'papermill s':>12}{'process s':>11}{'peak RSS MB':>13}")
            for s, v in full["stages"].items():
                print(
                    f"  {s:<14}{fmt(v['papermill_s']):>12}{fmt(v['process_s']):>11}"
                    f"{fmt(v['peak_rss_mb'], '.0f'):>13}"
                )
            pm_sum = sum(v["papermill_s"] or 0 for v in full["stages"].values())
            pr_sum = sum(v["process_s"] or 0 for v in full["stages"].values())
            print(
                f"  {'sum':<14}{pm_sum:>12.2f}{pr_sum:>11.2f}   (wall - process sum = DVC's own"
                f" time: {full['median_s'] - pr_sum:.1f} s)"
            )
        checks.append(("full dvc repro -f (median)", full.get("median_s"), TARGETS["full_s"]))
    if "noop" in res:
        noop = res["noop"]
        walls = ", ".join(f"{r['wall_s']:.2f}" for r in noop["runs"])
        load = statistics.median(r["other_load_cores"] for r in noop["runs"])
        walls += f" (other load {load:.2f} cores)"
        print(f"NO-OP `dvc repro`: {walls} s; all up to date: {noop['all_up_to_date']}")
        checks.append(("no-op dvc repro (median)", noop.get("median_s"), TARGETS["noop_s"]))
    if "overhead" in res:
        print("PAPERMILL OVERHEAD: stage command (nbrun) vs the same code cells as a plain script")
        print(
            f"  {'stage':<14}{'nbrun s':>9}{'script s':>10}{'(body s)':>10}{'overhead s':>12}"
            f"{'ratio':>7}{'papermill dur':>15}{'cell sum':>10}  {'html*':<8} other load"
        )
        for s, v in res["overhead"].items():
            html = v.get("html_render")
            html_s = f"{html['import_s'] + html['render_s']:.2f} s" if html else "-"
            print(
                f"  {s:<14}{v['nbrun_s']:>9.2f}{v['script_s']:>10.2f}"
                f"{fmt(v.get('script_body_s')):>10}{v['overhead_s']:>12.2f}"
                f"{v['nbrun_s'] / v['script_s']:>7.2f}{v['papermill_duration_s']:>15.2f}"
                f"{v['cell_sum_s']:>10.2f}  {html_s:<8} {fmt(v.get('other_load_cores'))}"
            )
            checks.append((f"papermill overhead {s}", v["overhead_s"], TARGETS["overhead_s"]))
        print(
            "  medians of alternating runs; overhead = nbrun - script (whole processes); body = the"
            " script's code without interpreter start/exit;\n  papermill dur = papermill's own"
            " duration (kernel start + cells); *html render timed alone, in a fresh process"
        )
    if "scaling" in res:
        sc = res["scaling"]
        an = sc.get("analysis", {})
        if sc["reduced_params"]:
            how = "REDUCED for these runs only: " + json.dumps(sc.get("param_changes"))
        else:
            how = "as in params.yaml"
        print(f"SCALING (data repeated, unique ids, Parquet; candidate params {how})")
        print(
            f"  {'size':>6}{'rows':>11}{'wall s':>9}{'s/row vs 1st':>14}{'exp k':>7}"
            f"{'tree RSS MB':>13}{'exp k':>7}{'largest proc MB':>17}{'other load':>12}  status"
        )
        for row in an.get("totals", []):
            status = "ok" if row["finished"] else "DID NOT FINISH"
            print(
                f"  {'x' + str(row['factor']):>6}{row['rows']:>11,}{row['wall_s']:>9.1f}"
                f"{fmt(row.get('time_per_row_vs_base'), '.3f'):>14}{fmt(row.get('time_exponent')):>7}"
                f"{fmt(row.get('peak_tree_rss_mb'), '.0f'):>13}{fmt(row.get('rss_exponent')):>7}"
                f"{fmt(row.get('max_rss_largest_process_mb'), '.0f'):>17}"
                f"{fmt(row.get('other_load_cores')):>12}  {status}"
            )
        factors = [str(r["factor"]) for r in an.get("totals", [])]
        print(
            "  per stage: papermill seconds (CPU seconds of nbrun + kernel; process wall time is in the JSON):"
        )
        print("  " + f"{'stage':<14}" + "".join(f"{'x' + f:>18}" for f in factors))
        for stage, by in an.get("stages", {}).items():
            cells = [
                f"{fmt(by[f]['papermill_s'], '.1f')} ({fmt(by[f].get('cpu_s'), '.1f')})" for f in factors
            ]
            print("  " + f"{stage:<14}" + "".join(f"{c:>18}" for c in cells))
        print("  exponent k (t ~ rows^k) between consecutive sizes, cells taking >= 1 s at the larger:")
        for entry in an.get("cells", []):
            big = [k for k, v in entry["exponents"].items() if v is not None]
            if not big or max(entry["s"].values()) < 1.0:
                continue
            ks = ", ".join(
                f"x{k.replace('->', '->x')}: {v:.2f}" for k, v in entry["exponents"].items() if v is not None
            )
            secs = ", ".join(f"{v:.1f}" for v in entry["s"].values())
            print(
                f"    {entry['stage']:<13} cell {entry['cell']:>2} {entry['label'][:45]:<45} s=[{secs}]  {ks}"
            )
        if an.get("superlinear"):
            print("  SUPERLINEAR (k > 1.15, >= 1 s):")
            for s in an["superlinear"]:
                print(
                    f"    {s['stage']} cell {s['cell']} `{s['label']}` {s['between']}: k={s['exponent']}"
                    f" ({s['seconds'][0]:.1f} s -> {s['seconds'][1]:.1f} s)"
                )
    if "steps" in res and res["steps"].get("analysis"):
        st = res["steps"]
        factors = sorted(st["sizes"], key=int)
        print(
            "STEPS: the pipeline's functions timed in one process (CPU s, all threads; wall s in the JSON)"
            + (", reduced candidates" if st.get("reduced_params") else "")
        )
        for f in factors:
            r = st["sizes"][f]
            state = "ok" if r.get("finished") else "DID NOT FINISH"
            print(
                f"  x{f}: {r['rows']:,} rows, {r['wall_s']:.0f} s, other load"
                f" {r['other_load_cores']:.2f} cores, {state}"
            )
        print(
            f"  {'stage':<13}{'step':<46}"
            + "".join(f"{'x' + f:>9}" for f in factors)
            + "   k (cpu) between sizes"
        )
        for e in st["analysis"]["steps"]:
            ks = ", ".join(f"{v:.2f}" for v in e["cpu_exponents"].values() if v is not None)
            cells = "".join(f"{fmt(e['cpu_s'].get(f)):>9}" for f in factors)
            print(f"  {e['stage']:<13}{e['step'][:45]:<46}{cells}   {ks}")
        if st["analysis"]["superlinear"]:
            print("  SUPERLINEAR (CPU exponent > 1.15, >= 0.5 CPU s):")
            for x in st["analysis"]["superlinear"]:
                print(
                    f"    {x['stage']} {x['step']} {x['between']}: k={x['exponent']}"
                    f" ({x['cpu_s'][0]:.2f} -> {x['cpu_s'][1]:.2f} CPU s)"
                )
    if checks:
        print(line)
        print("TARGETS")
        for name, value, target in checks:
            print(f"  {name:<40}{fmt(value):>9} s  target <= {target:>5} s  {verdict(value, target)}")
    print(line)


# --------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError, StopIteration):
        model = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [STEPS_WORKER]:
        return steps_worker(*argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--parts",
        default="full,noop,overhead,scaling,steps",
        help="comma-separated: full, noop, overhead, scaling, steps",
    )
    ap.add_argument("--full-runs", type=int, default=3)
    ap.add_argument("--full-timeout", type=float, default=900, help="seconds per full run")
    ap.add_argument("--noop-runs", type=int, default=5)
    ap.add_argument("--overhead-runs", type=int, default=3)
    ap.add_argument("--overhead-stages", default=DEFAULT_OVERHEAD_STAGES)
    ap.add_argument("--sizes", default="1,10,100", help="scaling factors, e.g. 1,10,100,1000")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per scaling (or steps) size")
    ap.add_argument("--steps-sizes", default="10,100", help="sizes for the steps part, e.g. 10,100,1000")
    ap.add_argument(
        "--scaling-params",
        choices=("reduced", "default"),
        default="reduced",
        help="candidate hyperparameters for the scaling runs",
    )
    ap.add_argument("--workdir", type=Path, help="where the copies go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the project copies")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument("--report", type=Path, help="only print the report of a saved results JSON")
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the measured commands (repeatable), e.g. OMP_NUM_THREADS=1",
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        help="before each full run, each scaling size, the no-op batch and each overhead stage,"
        " wait up to this many seconds for other processes to use < 0.3 cores (shared box);"
        " 0: do not wait",
    )
    args = ap.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        if "scaling" in saved and saved["scaling"].get("sizes"):
            saved["scaling"]["analysis"] = analyse_scaling(saved["scaling"])
        if "steps" in saved and saved["steps"].get("sizes"):
            saved["steps"]["analysis"] = analyse_steps(saved["steps"])
        print_report(saved)
        return 0
    global WAIT_IDLE
    WAIT_IDLE = args.wait_idle
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--env wants KEY=VALUE, not {item!r}")
        EXTRA_ENV[key] = value
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"full", "noop", "overhead", "scaling", "steps"}
    if unknown:
        ap.error(f"unknown parts: {', '.join(sorted(unknown))}")

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"pipeline-{stamp}{'-' + args.tag if args.tag else ''}"
    out_dir = RESULTS / name
    out_dir.mkdir(parents=True, exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = out_dir / "logs"
    res: dict[str, Any] = {
        "started": stamp,
        "machine": machine(),
        "project": {
            "head": git("rev-parse", "HEAD", cwd=REPO).strip(),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no", cwd=REPO).strip()),
        },
        "args": {k: str(v) for k, v in vars(args).items()},
        "extra_env": EXTRA_ENV,
        "targets": TARGETS,
        "workdir": str(work),
    }
    json_path = RESULTS / f"{name}.json"

    def save() -> None:
        json_path.write_text(json.dumps(res, indent=1, default=str))

    print(f"bench: results -> {json_path}; copies in {work}", flush=True)
    try:
        if parts & {"full", "noop", "overhead"}:
            project = make_copy(work / "default")
            res["imports_from"] = check_imports(project)
            if "full" in parts:
                print("full dvc repro -f ...", flush=True)
                res["full"] = part_full(project, logs, args.full_runs, args.full_timeout)
            else:  # no-op and overhead need a completed pipeline
                setup = run(
                    dvc("repro"),
                    project,
                    env=bench_env(project),
                    log=logs / "setup.log",
                    timeout=args.full_timeout,
                )
                res["setup"] = setup
                if setup["returncode"]:
                    raise SystemExit(f"bench: setup dvc repro failed:\n{setup.get('log_tail')}")
            save()
            if "noop" in parts:
                print("no-op dvc repro ...", flush=True)
                res["noop"] = part_noop(project, logs, args.noop_runs)
                save()
            if "overhead" in parts:
                print("papermill overhead ...", flush=True)
                stages = [s.strip() for s in args.overhead_stages.split(",") if s.strip()]
                res["overhead"] = part_overhead(project, logs, stages, args.overhead_runs, work / "scripts")
                save()
            if not args.keep:
                shutil.rmtree(project, ignore_errors=True)
        if "scaling" in parts:
            print("scaling ...", flush=True)
            sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
            res["scaling"] = {}
            part_scaling(
                res["scaling"],
                work,
                logs,
                out_dir,
                sizes,
                args.timeout,
                args.scaling_params == "reduced",
                args.keep,
                save,
            )
            res["scaling"]["analysis"] = analyse_scaling(res["scaling"])
            save()
        if "steps" in parts:
            print("steps ...", flush=True)
            res["steps"] = {}
            part_steps(
                res["steps"],
                work,
                logs,
                [int(s) for s in args.steps_sizes.split(",") if s.strip()],
                args.timeout,
                args.scaling_params == "reduced",
                save,
            )
            res["steps"]["analysis"] = analyse_steps(res["steps"])
    finally:
        res["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
        save()
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print_report(res)
    print(f"JSON: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
