"""A project copy that DVC runs in, and what the integration tests read back from it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from helpers.support import Background, read_yaml, run

REPRO_TIMEOUT = 1200  # seconds for one whole default run; it takes ~75 s on 2 idle cores

DATA_OUTPUTS = (
    "data/raw/snapshot.parquet",
    "data/processed/train.parquet",
    "data/processed/holdout.parquet",
)


def lock_out_md5s(root: Path) -> dict[str, str]:
    """path -> md5 of every stage output recorded in dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def metrics_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in sorted((root / "metrics").rglob("*.json"))
    }


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@dataclass
class Project:
    root: Path
    head: str  # the commit the first run was made at
    first_lock: dict[str, str] = field(default_factory=dict)
    first_metrics: dict[str, bytes] = field(default_factory=dict)

    @property
    def params(self) -> dict:
        return read_yaml(self.root / "params.yaml")

    @property
    def candidates(self) -> list[str]:
        return list(self.params["train"]["candidates"])

    def dvc(self, *args: str, timeout: float = REPRO_TIMEOUT, check: bool = False):
        return run(["dvc", *args], self.root, timeout=timeout, check=check)

    def promote(self) -> subprocess.CompletedProcess[str]:
        """`python -m pipelines promote` in the copy, against its own store (the tests' commands
        inherit no MLFLOW_TRACKING_URI)."""
        return run([sys.executable, "-m", "pipelines", "promote"], self.root, timeout=300)

    def tracked_files(self) -> dict[str, bytes]:
        """The bytes of every git-tracked file (params, source data, cache: false outputs)."""
        names = run(["git", "ls-files", "-z"], self.root, check=True).stdout.split("\0")
        return {n: (self.root / n).read_bytes() for n in names if n and (self.root / n).is_file()}

    def restore(self, tracked: dict[str, bytes]) -> None:
        """Put back the tracked files, then the DVC-cached outputs that dvc.lock names."""
        for name, data in tracked.items():
            path = self.root / name
            if not path.is_file() or path.read_bytes() != data:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        self.dvc("checkout", "--force", timeout=300, check=True)


@contextmanager
def mlflow_store(root: Path) -> Iterator[Any]:
    """A client of the copy's store, which is also MLflow's global URI meanwhile (models:/ URIs
    resolve through it); without this, MLflow would create ./mlflow.db in the working directory."""
    import mlflow

    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow.MlflowClient(tracking_uri=uri)
    finally:
        mlflow.set_tracking_uri(previous)


@dataclass
class RegressionRun:
    """A project copy set up for a regression data set, with `dvc repro` running on it."""

    root: Path
    frame: pd.DataFrame  # the source data
    params: dict  # params.yaml as the run sees it
    committed_contract: bytes  # data/contract.yaml before the run
    job: Background
