"""The one home of the project's trust rules for model files, used by release code and the bento.

The registry and the BentoML store are trust boundaries: whoever can write them must not be
able to run code here. So:
  - only skops files are loaded, never pickle or cloudpickle (loading a pickle runs code);
  - skops trusts only the types named in `TRUSTED_TYPES`, the code's own list, never the list an
    artifact's MLmodel carries (MLflow GHSA-w582-9x45-8mpx: that list is the attacker's);
  - a path an artifact names is confined to the artifact's folder;
  - a file is verified against a digest recorded when the model was promoted, from the same
    bytes that are then loaded: it is read once, and never re-opened by path after the check.

This module imports nothing of ours, so the bento can carry it (tests/repo/test_import_direction.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

# The non-default types our candidates hold, which skops must be told to trust. MLflow reloads a
# model right after saving it with this list, so a missing name fails at logging time, not in
# serving. Adding a name here is a security decision: a trusted type is one skops will construct.
TRUSTED_TYPES: tuple[str, ...] = (
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)
SKOPS = "skops"
# The flavors a model logged by this project has; python_function must load through sklearn's
# loader (a custom pyfunc is a cloudpickled object).
SKLEARN_FLAVOR = "sklearn"
PYFUNC_FLAVOR = "python_function"
SKLEARN_LOADER = "mlflow.sklearn"


class Untrusted(Exception):
    """A model file or artifact the project refuses to load; the message is one line naming it."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shown(value: Any, limit: int = 60) -> str:
    """A value from an artifact, safe to print on one line: repr escapes control characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_verified(path: str | Path, expected_sha256: str | None, what: str = "model") -> bytes:
    """The file's bytes, read once, if their SHA-256 is the recorded one; the caller loads from
    these bytes and never re-opens the path, so the file cannot change between check and load."""
    path = Path(path)
    if not expected_sha256:
        raise Untrusted(f"{what}: {path.name} has no recorded digest to verify it against")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Untrusted(f"{what}: {path.name} cannot be read ({type(exc).__name__})") from None
    if sha256_bytes(data) != expected_sha256:
        raise Untrusted(f"{what}: {path.name} does not match its recorded SHA-256 (tampered or replaced)")
    return data


@contextlib.contextmanager
def private_copy(data: bytes, name: str) -> Iterator[str]:
    """The path of a fresh copy of verified `data`, in a new folder only this user can enter
    (0700, from mkdtemp), removed on exit. For what can only be loaded from a path (a shared
    library runs code when loaded): nothing can swap the file between the check and the load,
    since no other user can write there and the folder did not exist before."""
    folder = tempfile.mkdtemp(prefix="verified-")
    try:
        path = os.path.join(folder, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o500)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def confined(folder: str | Path, relative: Any, what: str = "model") -> Path:
    """`folder / relative`, refusing absolute paths, `..`, and symlinks that resolve outside."""
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise Untrusted(f"{what}: the model path {shown(relative)} is not a relative file name")
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        raise Untrusted(f"{what}: the model path {shown(relative)} is absolute")
    if ".." in posix.parts or ".." in windows.parts:
        raise Untrusted(f"{what}: the model path {shown(relative)} leaves its folder ('..')")
    base = Path(folder).resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        raise Untrusted(f"{what}: the model path {shown(relative)} resolves outside its folder")
    return target


def check_mlmodel(mlmodel: Any, what: str) -> dict[str, Any]:
    """The sklearn flavor's settings of an MLmodel this project will load, or Untrusted.

    Refused: a flavor other than sklearn and python_function (through sklearn's loader); any
    serialization format but skops (MLflow reads a missing one as pickle); skops trusted types
    outside `TRUSTED_TYPES`. The caller still confines `pickled_model` to the download.
    """
    flavors = mlmodel.get("flavors") if isinstance(mlmodel, Mapping) else None
    if not isinstance(flavors, Mapping) or not isinstance(flavors.get(SKLEARN_FLAVOR), Mapping):
        raise Untrusted(f"{what}: its MLmodel has no sklearn flavor")
    for name, conf in flavors.items():
        if name not in (SKLEARN_FLAVOR, PYFUNC_FLAVOR) or not isinstance(conf, Mapping):
            raise Untrusted(f"{what}: its MLmodel has a flavor this project does not load: {shown(name)}")
        if name == PYFUNC_FLAVOR and conf.get("loader_module") != SKLEARN_LOADER:
            raise Untrusted(f"{what}: its python_function flavor does not load through mlflow.sklearn")
        if name == SKLEARN_FLAVOR or "serialization_format" in conf:
            fmt = conf.get("serialization_format", "pickle")
            if fmt != SKOPS:
                raise Untrusted(
                    f"{what}: its {name} flavor is serialized as {shown(fmt)}, not skops: "
                    "loading it could run code"
                )
    conf = dict(flavors[SKLEARN_FLAVOR])
    listed = conf.get("skops_trusted_types") or []
    if not isinstance(listed, list):
        raise Untrusted(f"{what}: its MLmodel's skops_trusted_types is not a list")
    extra = [t for t in listed if t not in TRUSTED_TYPES]
    if extra:
        raise Untrusted(
            f"{what}: its MLmodel trusts {len(extra)} type(s) outside the project's list, "
            f"e.g. {shown(extra[0])}"
        )
    return conf


def load_skops(data: bytes, what: str = "model") -> Any:
    """The object in a skops file's bytes, trusting the code's `TRUSTED_TYPES` only."""
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return skops.io.loads(data, trusted=list(TRUSTED_TYPES))
    except UntrustedTypesFoundException:
        raise Untrusted(f"{what}: the skops file holds types outside the project's trusted list") from None
    except Exception as exc:  # a damaged or foreign file fails in many ways inside skops
        raise Untrusted(f"{what}: not a loadable skops file ({type(exc).__name__})") from None
