"""Helpers shared by the test modules: the project's paths, subprocess runs, project copies, data."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

PROJECT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent  # the interpreter running pytest: .venv/bin under `make test`
STAGE_ORDER = ("ingest", "explore", "split", "train")
TRACEBACK = "Traceback (most recent call last)"


def subprocess_env() -> dict[str, str]:
    """The environment of every command the tests run: the project's venv first on PATH, no
    telemetry, no team tracking server, and a git identity for the commits made in copies."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("VIRTUAL_ENV", None)
    env.update(
        {
            "DVC_NO_ANALYTICS": "1",
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "DO_NOT_TRACK": "true",
            "BENTOML_DO_NOT_TRACK": "true",
            "JUPYTER_PLATFORM_DIRS": "1",
            "GIT_AUTHOR_NAME": "pytest",
            "GIT_AUTHOR_EMAIL": "pytest@example.invalid",
            "GIT_COMMITTER_NAME": "pytest",
            "GIT_COMMITTER_EMAIL": "pytest@example.invalid",
            "PYTHONUNBUFFERED": "1",
            # One thread per BLAS/OpenMP pool: the suite shares a small machine, and OpenMP's
            # spin-waiting makes histogram gradient boosting 5-20x slower when cores are busy.
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
    )
    return env


def run(
    args: list[str], cwd: Path, *, timeout: float = 600, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a command; with check=True a failure shows its output instead of a bare exit code."""
    result = subprocess.run(
        args, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited with {result.returncode} in {cwd}\n"
            f"--- stdout (tail)\n{result.stdout[-4000:]}\n--- stderr (tail)\n{result.stderr[-4000:]}"
        )
    return result


class Background:
    """A command running while the tests do other things; its output goes to files."""

    def __init__(self, args: list[str], cwd: Path, logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.args, self.stdout, self.stderr = args, logs / "stdout.txt", logs / "stderr.txt"
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            # Its own process group, so that stop() ends DVC with the kernels it started.
            self.process = subprocess.Popen(
                args, cwd=cwd, env=subprocess_env(), stdout=out, stderr=err, start_new_session=True
            )

    def wait(self, timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        return subprocess.CompletedProcess(
            self.args, code, self.stdout.read_text(errors="replace"), self.stderr.read_text(errors="replace")
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def git_tracked_files(root: Path = PROJECT, *, untracked: bool = False) -> list[str]:
    """Files git tracks; with untracked=True also the new ones it does not ignore."""
    args = ["git", "ls-files", "-z", "--cached"] + (["--others", "--exclude-standard"] if untracked else [])
    out = subprocess.run(args, cwd=root, capture_output=True, text=True, check=True).stdout
    return sorted({name for name in out.split("\0") if name})


def copy_project(dst: Path) -> Path:
    """The project as `git add -A && git commit` would record it, in a fresh git repository.

    That is the git-tracked files as they are in the working tree, plus new files git does not
    ignore (a new notebook and its dvc.yaml stage travel together), minus deleted ones.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for name in git_tracked_files(untracked=True):
        source = PROJECT / name
        if not source.is_file():  # deleted in the working tree
            continue
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        target.chmod(0o644 | (source.stat().st_mode & 0o111))
    run(["git", "init", "-q", "-b", "main"], dst, check=True)
    run(["git", "add", "-A"], dst, check=True)
    run(["git", "commit", "-q", "-m", "copy of the project under test"], dst, check=True)
    return dst


def retrain_ready(params: dict) -> dict:
    """The project's params made small for tests that retrain (one candidate, 2 folds, a light
    evaluation: two `dvc repro` fit in a test) and whose gate passes any retrained challenger:
    the loop is under test there, not the data."""
    params["train"]["cv_folds"] = 2
    params["train"]["candidates"] = {"linear": params["train"]["candidates"]["linear"]}
    params["evaluate"] = {"importance_repeats": 1, "importance_max_rows": 200}
    params["promote"]["min_delta"] = -1.0
    params["promote"]["guards"] = {}
    params["retrain"]["fresh_min_delta"] = -1.0
    return params


def git_head(root: Path) -> str:
    return run(["git", "rev-parse", "HEAD"], root, check=True).stdout.strip()


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def write_yaml(obj: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))


def error_lines(stderr: str) -> list[str]:
    """The one-line reports of pipelines.core.nbrun (`ERROR <stage>: ...`), not DVC's `ERROR: ...`."""
    return [line.strip() for line in stderr.splitlines() if line.startswith("ERROR ")]


def classification_frame(rows: int = 200, seed: int = 0) -> pd.DataFrame:
    """A small churn-like table: an id, numbers with gaps, categories and a learnable label."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 72, rows)
    charges = rng.uniform(20, 120, rows).round(2)
    plan = rng.choice(["basic", "plus", "premium"], rows)
    region = rng.choice(["north", "south", "east", "west"], rows)
    score = -0.05 * tenure + 0.03 * charges + (plan == "basic") * 1.0 + rng.normal(0, 0.5, rows)
    label = np.where(score > np.quantile(score, 0.7), "leave", "stay")
    total = (tenure * charges).round(2).astype(float)
    total[rng.choice(rows, max(1, rows // 40), replace=False)] = np.nan
    return pd.DataFrame(
        {
            "account": [f"A{i:05d}" for i in range(rows)],
            "tenure": tenure,
            "monthly": charges,
            "total": total,
            "plan": plan,
            "region": region,
            "label": label,
        }
    )


def regression_frame(rows: int = 400, seed: int = 1) -> pd.DataFrame:
    """A small table with a numeric target that depends on numbers and a category."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(30, 200, rows).round(1)
    rooms = rng.integers(1, 7, rows)
    age = rng.uniform(0, 80, rows).round(1)
    district = rng.choice(["centre", "suburb", "rural"], rows)
    bonus = pd.Series(district).map({"centre": 120.0, "suburb": 40.0, "rural": 0.0}).to_numpy()
    price = 2.5 * size + 15 * rooms - 0.8 * age + bonus + rng.normal(0, 10, rows)
    age[rng.choice(rows, 10, replace=False)] = np.nan
    return pd.DataFrame(
        {
            "listing": np.arange(rows),
            "size_m2": size,
            "rooms": rooms,
            "age_years": age,
            "district": district,
            "price": price.round(2),
        }
    )
