"""MLflow at the edges: one absolute store, lineage tags, and models saved without pickle."""

from __future__ import annotations

import hashlib
import json
import subprocess
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from pipelines.core.stores import store_dir, tracking_uri
from pipelines.serving.trust import TRUSTED_TYPES

LINEAGE_PREFIX = "lineage."
# Packages a logged model needs to load; pinned explicitly because inferring them costs ~5 s.
MODEL_REQUIREMENTS = ("scikit-learn", "pandas", "numpy", "scipy", "skops")
# Models are saved with skops, not pickle: loading one from the registry cannot run arbitrary
# code. skops needs the few non-default types our candidates hold named explicitly: the list is
# the code's own, `trust.TRUSTED_TYPES`, which every load enforces (never an artifact's copy).


def use_experiment(name: str, store: Path) -> str:
    """Point MLflow at the store and return the experiment's id, creating it if needed.

    The artifact location is set explicitly and absolute: MLflow's default is relative to the
    working directory, which a DVC experiment throws away.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(store)
    local = uri.startswith("sqlite:")  # a tracking server keeps artifacts its own way
    store.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        artifacts = (store / "artifacts").as_uri() if local else None
        try:
            experiment_id = client.create_experiment(name, artifact_location=artifacts)
        except MlflowException as exc:
            # Two queued experiments (`dvc queue start --jobs 2`) on a fresh tracking server both
            # find no experiment and both create it: the second one takes the first one's.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment_id = client.get_experiment_by_name(name).experiment_id
    # By id: set_experiment(name) loses that same race by returning without activating it, and the
    # runs land in the Default experiment.
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def use_project_experiment(root: Path, params: dict[str, Any]) -> str:
    """use_experiment for the project's `tracking` section: its experiment, in its store."""
    return use_experiment(params["tracking"]["experiment"], store_dir(root, params["tracking"]["store"]))


def lineage_of(tags: dict[str, str]) -> dict[str, str]:
    """The lineage tags (git commit, data MD5, params hash) among a run's or a version's tags."""
    return {k: v for k, v in tags.items() if k.startswith(LINEAGE_PREFIX)}


def file_md5(path: str | Path) -> str:
    """The MD5 of a file's bytes: the hash DVC 3 records for it in dvc.lock."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def params_hash(params: Any) -> str:
    canonical = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def lineage_tags(root: Path, raw_data: str | Path, params: Any) -> dict[str, str]:
    return {
        f"{LINEAGE_PREFIX}git_commit": git_commit(root),
        f"{LINEAGE_PREFIX}data_md5": file_md5(root / raw_data),
        f"{LINEAGE_PREFIX}params_hash": params_hash(params),
    }


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def pinned_requirements(packages: tuple[str, ...] = MODEL_REQUIREMENTS) -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in packages]


def signature_frame(frame: Any) -> Any:
    """The input example as the model's signature should declare it.

    A column that is integer in the training frame (numpy int64: the contract does not let it
    be missing) becomes int64, declared `long`. MLflow then accepts int64 and narrower integers,
    as `pandas.read_csv` gives them, and refuses a float there: even a whole one, and a NaN with
    its hint about missing values ("Can not safely convert float64 to int64"). That is what the
    contract says too, for which a gap in such a column is a violation. A column that may be
    missing is float64 in the training frame, declared `double`, and takes NaN; MLflow refuses
    int64 for it (unless every value is 0 or 1), so a caller whose file holds only whole numbers
    there casts it to float. A nullable integer extension dtype (Int64) may hold NA, so it is
    declared `double` too. A categorical column (the train stage's text, `text_as_categories`)
    is declared as the text it holds.
    """
    import pandas as pd

    casts = {}
    for column, dtype in frame.dtypes.items():
        if isinstance(dtype, pd.CategoricalDtype):  # text_as_categories' columns: text to callers
            casts[column] = "str"
        elif pd.api.types.is_integer_dtype(dtype):
            nullable = isinstance(dtype, pd.api.extensions.ExtensionDtype)
            casts[column] = "float64" if nullable else "int64"
    return frame.astype(casts)


def log_model(model: Any, input_example: Any, name: str = "model") -> str:
    """Log a scikit-learn pipeline with its signature and pinned requirements; return its URI.

    The signature is inferred from `input_example` as `signature_frame` declares it.
    """
    import mlflow
    from mlflow.models import infer_signature

    example = signature_frame(input_example)
    with warnings.catch_warnings():
        # MLflow's hint about missing values in integer columns: signature_frame's choice.
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        signature = infer_signature(example, model.predict(example))
    info = mlflow.sklearn.log_model(
        model,
        name=name,
        serialization_format="skops",
        skops_trusted_types=list(TRUSTED_TYPES),
        signature=signature,
        input_example=example,
        pip_requirements=pinned_requirements(),
    )
    return info.model_uri


def log_notebook(path: str | Path | None) -> None:
    """Attach an executed notebook to the active run (papermill saves it after every cell)."""
    import mlflow

    if path is not None and Path(path).is_file():
        mlflow.log_artifact(str(path), artifact_path="notebooks")
