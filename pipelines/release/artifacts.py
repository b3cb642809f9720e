"""A logged or registered model, loaded from MLflow by the project's trust rules.

The only way release code reads a model out of MLflow. It never calls `mlflow.sklearn.load_model`,
which honours the artifact's own serialization format (pickle runs code) and its own skops
trusted-type list. Instead: download the files, check the MLmodel (`trust.check_mlmodel`),
confine the model path to the download, read the skops bytes once, verify them against a
recorded digest when there is one, and load those same bytes with the code's trusted types.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.errors import PipelineError
from pipelines.serving import trust

PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
DIGEST_TAG = "model.sha256"  # registry version tag: the skops bytes the gate scored and promoted


class Refused(PipelineError):
    """A model the project will not load: one line naming it and why (`ERROR <command>: …`)."""


@dataclass(frozen=True)
class LoadedArtifact:
    """A model loaded from MLflow, with the exact bytes it was loaded from and their digest."""

    model: Any
    data: bytes
    sha256: str
    mlmodel: dict[str, Any]


def version_uri(name: str, version: Any) -> str:
    return f"models:/{name}/{version}"


def recorded_digest(version: Any) -> str | None:
    """The digest recorded on a registry version at promotion, if any."""
    return (getattr(version, "tags", None) or {}).get(DIGEST_TAG) or None


def load_from_folder(local: Path, what: str, expected_sha256: str | None = None) -> LoadedArtifact:
    """The model in a downloaded MLflow model folder, by the trust rules (see the module note)."""
    try:
        mlmodel = yaml.safe_load(trust.confined(local, "MLmodel", what).read_text())
        conf = trust.check_mlmodel(mlmodel, what)
        path = trust.confined(local, conf.get("pickled_model"), what)
        if expected_sha256 is None:
            data = path.read_bytes()  # nothing recorded yet: the caller records this digest
        else:
            data = trust.read_verified(path, expected_sha256, what)
        model = trust.load_skops(data, what)
    except trust.Untrusted as exc:
        raise Refused(str(exc)) from None
    except (OSError, yaml.YAMLError) as exc:
        raise Refused(f"{what}: its model files cannot be read ({type(exc).__name__})") from None
    return LoadedArtifact(model=model, data=data, sha256=trust.sha256_bytes(data), mlmodel=mlmodel)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow draws a download progress bar on stderr, where a command's one error line goes."""
    previous = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = previous


def load(uri: str, what: str, expected_sha256: str | None = None) -> LoadedArtifact:
    """Download `uri` (a run's logged model or a registry version) to a temporary folder and load it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="model-") as tmp, _no_progress_bars():
        try:
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp))
        except (MlflowException, OSError) as exc:
            raise Refused(f"{what}: its artifacts cannot be downloaded ({type(exc).__name__})") from None
        return load_from_folder(local, what, expected_sha256)


def load_version(name: str, version: Any, require_digest: bool) -> LoadedArtifact:
    """A registry version's model, verified against its `model.sha256` tag.

    `require_digest`: refuse a version without one (packaging); otherwise (re-scoring a champion
    promoted before digests were recorded) load it by the other rules and let the caller record it.
    """
    what = f"registry version {version.version} of '{name}'"
    digest = recorded_digest(version)
    if digest is None and require_digest:
        raise Refused(
            f"{what} has no {DIGEST_TAG} tag (promoted before digests were recorded): "
            "run `make promote` to record it, then package again"
        )
    return load(version_uri(name, version.version), what, digest)
