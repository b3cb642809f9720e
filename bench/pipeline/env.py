"""The bench environment: where things are, the run's settings, the environment every measured
command gets, the throwaway project copies, and a description of the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
RESULTS = REPO / "bench" / "results"
MB = 1024 * 1024


@dataclass
class Settings:
    """Set once by the command line, read by every measured command."""

    # Seconds to wait, before each measured command, for other processes to leave the CPUs (--wait-idle)
    wait_idle: float = 0.0
    # Extra environment of every measured command (--env KEY=VALUE), e.g. OMP_NUM_THREADS=1 for an A/B
    extra_env: dict[str, str] = field(default_factory=dict)


SETTINGS = Settings()


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
    env.update(SETTINGS.extra_env)
    return env


def dvc(*args: str) -> list[str]:
    """The project's own dvc, whatever PATH the bench was started with."""
    return [str(VENV_BIN / "dvc"), *args]


def git(*args: str, cwd: Path) -> str:
    """Run git without the repository's hooks; its stdout."""
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


def in_copy(cmd: list[str], project: Path) -> str:
    """Run an unmeasured helper command in the copy, under bench_env; its stdout."""
    return subprocess.run(
        cmd, cwd=project, env=bench_env(project), capture_output=True, text=True, check=True
    ).stdout


def check_imports(project: Path) -> str:
    """Where `pipelines` is imported from under bench_env: it must be the copy."""
    out = in_copy(
        [str(VENV_BIN / "python"), "-c", "import pipelines; print(pipelines.__file__)"], project
    ).strip()
    if not Path(out).resolve().is_relative_to(project.resolve()):
        raise SystemExit(f"bench: pipelines imports from {out}, not from the copy {project}")
    return out


def project_state() -> dict[str, Any]:
    """The real project's commit, and whether its tracked files differ from it."""
    return {
        "head": git("rev-parse", "HEAD", cwd=REPO).strip(),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no", cwd=REPO).strip()),
    }


def machine() -> dict[str, Any]:
    """CPUs, memory, platform and the load average before the run."""
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
