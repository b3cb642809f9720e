"""The `overhead` part: per stage, the stage's own command from dvc.lock (`python -m
pipelines.core.nbrun ...`) against the notebook's code cells run as one plain script, with the
parameters papermill would inject, alternately; plus the `--html` rendering timed alone."""

from __future__ import annotations

import json
import re
import shlex
import statistics
from pathlib import Path
from typing import Any

import yaml

from .analysis import median_of
from .env import VENV_BIN, bench_env, dvc, in_copy
from .notebooks import notebook_timings
from .process import run

RUN_TIMEOUT_S = 1800
# "auto": the stages before training where dvc.yaml has them, and the first train@ stage
AUTO_STAGES = ("ingest", "split")

HTML_TIMER = """
import json, sys, time
t0 = time.perf_counter()
from pipelines.core.nbrun import render_html
t1 = time.perf_counter()
render_html(__import__("pathlib").Path(sys.argv[1]))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "render_s": t2 - t1}))
"""


def lock_commands(project: Path) -> dict[str, str]:
    """Each stage's command as dvc.lock records it, white space folded, in dvc.yaml's order; only
    the stages dvc.yaml defines now (dvc.lock keeps the entries of renamed or removed stages)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    listed = in_copy(dvc("stage", "list", "--name-only"), project).split()
    stages = lock["stages"]
    return {name: " ".join(stages[name]["cmd"].split()) for name in listed if name in stages}


def auto_stages(commands: dict[str, str]) -> list[str]:
    """The stages `--overhead-stages auto` measures."""
    stages = [s for s in AUTO_STAGES if s in commands]
    return stages + [s for s in commands if s.startswith("train@")][:1]


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


def html_render(project: Path, output: Path) -> dict[str, float]:
    """nbrun's `--html` rendering of an executed notebook, timed alone in a fresh process."""
    timer = in_copy([str(VENV_BIN / "python"), "-c", HTML_TIMER, str(output)], project)
    return json.loads(timer.strip().splitlines()[-1])


def measure_stage(
    project: Path, logs: Path, stage: str, argv: list[str], output: Path, script: Path, runs: int
) -> dict[str, Any]:
    """The stage's command (writing `output`) and its plain script, alternately, `runs` times."""
    env = bench_env(project)
    nb_walls, py_walls, py_bodies, pm_durations, cell_sums = [], [], [], [], []
    loads: list[dict[str, Any]] = []
    for i in range(runs):
        r_nb = run(
            argv,
            project,
            env=env,
            log=logs / f"overhead-{stage}-nb-{i}.log",
            timeout=RUN_TIMEOUT_S,
            wait=i == 0,
        )
        r_py = run(
            [str(VENV_BIN / "python"), str(script)],
            project,
            env=env,
            log=logs / f"overhead-{stage}-py-{i}.log",
            timeout=RUN_TIMEOUT_S,
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
        entry["html_render"] = html_render(project, output)
    return entry


def part_overhead(project: Path, logs: Path, stages: list[str], runs: int, scripts: Path) -> dict[str, Any]:
    """Each stage's command against the same code as a plain script, alternately, `runs` times."""
    commands = lock_commands(project)
    if stages == ["auto"]:
        stages = auto_stages(commands)
    out: dict[str, Any] = {}
    for stage in stages:
        if stage not in commands:
            print(f"  overhead: no stage {stage} in dvc.yaml and dvc.lock, skipped", flush=True)
            continue
        argv = shlex.split(commands[stage])
        notebook, output, params = nbrun_parameters(argv, project)
        script = scripts / f"{stage.replace('@', '-')}.py"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(notebook_as_script(notebook, params))
        entry = out[stage] = measure_stage(project, logs, stage, argv, output, script, runs)
        print(
            f"  overhead {stage}: nbrun {entry['nbrun_s']:.2f} s, script {entry['script_s']:.2f} s,"
            f" +{entry['overhead_s']:.2f} s",
            flush=True,
        )
    return out
