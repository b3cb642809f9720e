"""The reference of the model version that served a window: found where `make package` stored it.

First the BentoML model store (the folder the service loads from: no server, no import of
bentoml), then the MLflow registry, where packaging logged it on the version's run with its digest
as a version tag. Both are treated as untrusted: a reference is used only if its bytes match a
digest anchored outside the file (the bundle's verified meta.json, or the registry tag), and only
if it reads back as a reference (`reference.check_reference`). A version with neither is named,
and its traffic is not judged for drift.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.monitoring.reference import REFERENCE_ARTIFACT, REFERENCE_TAG, check_reference
from pipelines.serving import bundle, trust

MAX_REFERENCE_BYTES = 64 << 20  # far above any reference we write (~0.4 MB for 20 columns)
HOLDOUT = "holdout_"


@dataclass(frozen=True)
class Served:
    """What the monitor needs of one model version: its reference and its training figures."""

    version: str
    reference: dict[str, Any]
    source: str  # "bentoml" or "mlflow"
    task: str
    holdout: dict[str, float] = field(default_factory=dict)  # the training metrics on the holdout


def _holdout(metrics: dict[str, Any]) -> dict[str, float]:
    return {k.removeprefix(HOLDOUT): float(v) for k, v in metrics.items() if k.startswith(HOLDOUT)}


def _parse(data: bytes, what: str) -> dict[str, Any]:
    try:
        return check_reference(json.loads(data))
    except (ValueError, TypeError, AttributeError) as exc:
        raise trust.Untrusted(f"{what}: {exc}") from None


def store_models(home: Path) -> list[Path]:
    """The packaged champions' folders in a BentoML home, newest first."""
    folder = home / "models" / bundle.MODEL_NAME
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and (p / bundle.MODEL_YAML).is_file()]
    return sorted(found, key=lambda p: (p / bundle.MODEL_YAML).stat().st_mtime, reverse=True)


def from_store(home: Path, registered: str, version: str) -> Served | None:
    """The newest packaged model of `version` whose reference verifies; None if none was packaged.
    A packaged model that fails verification raises `trust.Untrusted`."""
    for path in store_models(home):
        labels = bundle.labels(path)
        if labels.get("registry_version") != version or labels.get("registered_model") != registered:
            continue
        meta = bundle.read_meta(path)
        digest = (meta.get("digests") or {}).get(bundle.REFERENCE_FILE)
        if not digest:
            continue  # packaged before references existed: try an older package, then MLflow
        what = f"{bundle.describe(path)}'s monitoring reference"
        data = trust.read_verified(path / bundle.REFERENCE_FILE, digest, what)
        return Served(
            version, _parse(data, what), "bentoml", meta["task"], _holdout(meta.get("metrics") or {})
        )
    return None


def from_registry(client: Any, registered: str, version: str) -> Served | None:
    """The reference logged on the registry version's run; None if the version or its reference
    tag is missing. Bytes that do not match the tag raise `trust.Untrusted`."""
    from mlflow.exceptions import MlflowException

    try:
        entry = client.get_model_version(registered, version)
    except MlflowException:
        return None
    digest = (entry.tags or {}).get(REFERENCE_TAG)
    if not digest:
        return None
    what = f"the monitoring reference of registry version {version}"
    with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
        try:
            local = Path(client.download_artifacts(entry.run_id, REFERENCE_ARTIFACT, tmp))
        except (MlflowException, OSError) as exc:
            raise trust.Untrusted(f"{what} cannot be downloaded ({type(exc).__name__})") from None
        if local.stat().st_size > MAX_REFERENCE_BYTES:
            raise trust.Untrusted(f"{what} is larger than any reference the project writes")
        data = trust.read_verified(local, digest, what)
    run = client.get_run(entry.run_id)
    task = run.data.tags.get("task", "classification")
    return Served(version, _parse(data, what), "mlflow", task, _holdout(run.data.metrics))
