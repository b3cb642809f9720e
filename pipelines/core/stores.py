"""Where the project's stores live: the MLflow store and the BentoML home.

Every store is absolute and belongs to the user's project, even when a stage runs in a DVC
experiment's temporary copy (`dvc exp run --temp/--queue`, under <project>/.dvc/tmp/exps/),
whose relative paths are thrown away with the copy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_EXP_WORKSPACE_MARKER = (".dvc", "tmp", "exps")


def main_root(root: Path) -> Path:
    """The user's project for `root`, even when `root` is a DVC experiment's temporary copy."""
    parts = root.resolve().parts
    n = len(_EXP_WORKSPACE_MARKER)
    for i in range(len(parts) - n, 0, -1):
        if parts[i : i + n] == _EXP_WORKSPACE_MARKER:
            return Path(*parts[:i])
    return root.resolve()


def store_dir(root: Path, store: str) -> Path:
    """The store's absolute folder, in the user's project even under `dvc exp run --temp`."""
    path = Path(store)
    return path if path.is_absolute() else main_root(root) / path


def mlflow_store(root: Path, params: dict[str, Any]) -> Path:
    """The folder of the local MLflow store (SQLite file and artifacts): `tracking.store`."""
    return store_dir(root, params["tracking"]["store"])


def tracking_uri(store: Path) -> str:
    """MLFLOW_TRACKING_URI if set (a team server), else a SQLite file in the store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store / 'mlflow.db'}"


def bentoml_home(root: Path, params: dict[str, Any]) -> Path | None:
    """BENTOML_HOME if set; else `serving.bentoml_home` if set; else None: BentoML's own default
    (~/bentoml), where a plain `bentoml serve`, `bentoml list` and `bentoml models list` look."""
    if os.environ.get("BENTOML_HOME"):
        return Path(os.environ["BENTOML_HOME"])
    configured = (params.get("serving") or {}).get("bentoml_home")
    return store_dir(root, configured) if configured else None


def use_bentoml_home(root: Path, params: dict[str, Any]) -> None:
    """Point BentoML at the project's store before `bentoml` is imported (it reads the variable once)."""
    home = bentoml_home(root, params)
    if home is not None:
        os.environ["BENTOML_HOME"] = str(home)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
