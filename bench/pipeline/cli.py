"""The command line: options, the results file (rewritten after every part and size), the order
the parts run in, and the printout at the end (or of a saved JSON, with --report)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .analysis import analyse_scaling, analyse_steps
from .env import RESULTS, SETTINGS, check_imports, machine, make_copy, project_state
from .overhead import part_overhead
from .plot import plot_scaling
from .report import TARGETS, print_report
from .repro import part_full, part_noop, setup_repro
from .scale import part_scaling
from .steps import part_steps

PARTS = ("full", "noop", "overhead", "scaling", "steps")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description="Benchmark the DVC + papermill pipeline on a throwaway copy of the project.",
    )
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    ap.add_argument("--full-runs", type=int, default=3)
    ap.add_argument("--full-timeout", type=float, default=900, help="seconds per full run")
    ap.add_argument("--noop-runs", type=int, default=5)
    ap.add_argument("--overhead-runs", type=int, default=3)
    ap.add_argument(
        "--overhead-stages",
        default="auto",
        help="comma-separated stages of dvc.lock; auto: ingest and split, and the first train@ stage",
    )
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
    return ap


def print_saved(path: Path) -> int:
    """--report: analyse and print a saved results JSON again."""
    saved = json.loads(path.read_text())
    if "scaling" in saved and saved["scaling"].get("sizes"):
        saved["scaling"]["analysis"] = analyse_scaling(saved["scaling"])
    if "steps" in saved and saved["steps"].get("sizes"):
        saved["steps"]["analysis"] = analyse_steps(saved["steps"])
    print_report(saved)
    return 0


def configure(ap: argparse.ArgumentParser, args: argparse.Namespace) -> set[str]:
    """Apply --wait-idle and --env to SETTINGS; the parts to run."""
    SETTINGS.wait_idle = args.wait_idle
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--env wants KEY=VALUE, not {item!r}")
        SETTINGS.extra_env[key] = value
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - set(PARTS)
    if unknown:
        ap.error(f"unknown parts: {', '.join(sorted(unknown))}")
    return parts


def numbers(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


@dataclass
class Session:
    """One bench run: what was asked, where it works, and the results saved as they come."""

    args: argparse.Namespace
    parts: set[str]
    work: Path  # the project copies and the N x data
    out_dir: Path  # logs and the executed notebooks of the scaling sizes
    json_path: Path
    res: dict[str, Any]

    @property
    def logs(self) -> Path:
        return self.out_dir / "logs"

    def save(self) -> None:
        self.json_path.write_text(json.dumps(self.res, indent=1, default=str))


def run_default_copy(s: Session) -> None:
    """full, noop and overhead, on one copy of the project with the default data."""
    args, res = s.args, s.res
    project = make_copy(s.work / "default")
    res["imports_from"] = check_imports(project)
    if "full" in s.parts:
        print("full dvc repro -f ...", flush=True)
        res["full"] = part_full(project, s.logs, args.full_runs, args.full_timeout)
    else:  # no-op and overhead need a completed pipeline
        res["setup"] = setup = setup_repro(project, s.logs, args.full_timeout)
        if setup["returncode"]:
            raise SystemExit(f"bench: setup dvc repro failed:\n{setup.get('log_tail')}")
    s.save()
    if "noop" in s.parts:
        print("no-op dvc repro ...", flush=True)
        res["noop"] = part_noop(project, s.logs, args.noop_runs)
        s.save()
    if "overhead" in s.parts:
        print("papermill overhead ...", flush=True)
        stages = [x.strip() for x in args.overhead_stages.split(",") if x.strip()]
        res["overhead"] = part_overhead(project, s.logs, stages, args.overhead_runs, s.work / "scripts")
        s.save()
    if not args.keep:
        shutil.rmtree(project, ignore_errors=True)


def run_parts(s: Session) -> None:
    """Every part asked for, in order, saving as it goes."""
    args, res = s.args, s.res
    reduced = args.scaling_params == "reduced"
    if s.parts & {"full", "noop", "overhead"}:
        run_default_copy(s)
    if "scaling" in s.parts:
        print("scaling ...", flush=True)
        res["scaling"] = {}
        sizes = numbers(args.sizes)
        part_scaling(
            res["scaling"], s.work, s.logs, s.out_dir, sizes, args.timeout, reduced, args.keep, s.save
        )
        res["scaling"]["analysis"] = analyse_scaling(res["scaling"])
        s.save()
        with contextlib.suppress(ValueError):  # no finished size: nothing to plot
            print(f"  plot: {plot_scaling(res['scaling'], s.json_path.with_suffix('.png'))}", flush=True)
    if "steps" in s.parts:
        print("steps ...", flush=True)
        res["steps"] = {}
        part_steps(res["steps"], s.work, s.logs, numbers(args.steps_sizes), args.timeout, reduced, s.save)
        res["steps"]["analysis"] = analyse_steps(res["steps"])


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.report:
        return print_saved(args.report)
    parts = configure(ap, args)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"pipeline-{stamp}{'-' + args.tag if args.tag else ''}"
    out_dir = RESULTS / name
    out_dir.mkdir(parents=True, exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "started": stamp,
        "machine": machine(),
        "project": project_state(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "extra_env": SETTINGS.extra_env,
        "targets": TARGETS,
        "workdir": str(work),
    }
    session = Session(args, parts, work, out_dir, RESULTS / f"{name}.json", res)
    print(f"bench: results -> {session.json_path}; copies in {work}", flush=True)
    try:
        run_parts(session)
    finally:
        res["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
        session.save()
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print_report(res)
    print(f"JSON: {session.json_path}")
    return 0
