"""params.yaml: where it is, what it says, and whether it makes sense."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from pipelines.core.errors import ParamsError

PARAMS_FILE = "params.yaml"
TASKS = ("classification", "regression")


def project_root(start: Path | None = None) -> Path:
    """The nearest directory, from `start` upwards, that holds params.yaml."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / PARAMS_FILE).is_file():
            return candidate
    raise ParamsError(f"no {PARAMS_FILE} found in {here} or any parent directory")


def load_params(path: Path) -> dict[str, Any]:
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must hold a mapping of sections")
    return params


def notebook_params(**given: Any) -> SimpleNamespace:
    """Fill each notebook parameter left as None from params.yaml, and work from the project root.

    Under papermill every section arrives injected (`-f params.yaml`); opened in JupyterLab the
    parameters cell holds None and this reads the same file, so both runs see the same values.
    """
    root = project_root()
    os.chdir(root)  # params.yaml paths are relative to the project root
    missing = [name for name, value in given.items() if value is None]
    if missing:
        params = load_params(root / PARAMS_FILE)
        for name in missing:
            if name not in params:
                raise ParamsError(f"params.yaml has no section '{name}'")
            given[name] = params[name]
    return SimpleNamespace(root=root, **given)


def check_data_params(data: dict[str, Any], columns: list[str]) -> None:
    """Refuse `data` params that do not fit the columns at hand."""
    task = data.get("task")
    if task not in TASKS:
        raise ParamsError(f"data.task '{task}' is unknown; use one of: {', '.join(TASKS)}")
    target = data.get("target")
    if target not in columns:
        raise ParamsError(f"data.target '{target}' is not a column of the data")
    ignore = data.get("ignore") or []
    if not isinstance(ignore, list):
        raise ParamsError("data.ignore must be a list of column names")
    unknown = [c for c in ignore if c not in columns]
    if unknown:
        raise ParamsError(f"data.ignore names columns the data lacks: {', '.join(map(str, unknown))}")
    if target in ignore:
        raise ParamsError(f"data.target '{target}' is also listed in data.ignore")
