"""Whether the served model is still the registry's champion, read without MLflow.

The bento carries no MLflow, so the registry is read directly: a `sqlite:///` tracking store by
its alias table (read-only), a tracking server by its REST API. A rollback moves the alias while
this service keeps serving what it loaded; /metadata then says so. The answer is cached for a few
seconds, and a registry that cannot be read gives "unknown", never an error.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

ALIAS = "champion"  # the alias `make promote` and `python -m pipelines rollback` move
CACHE_SECONDS = 5.0  # /metadata is a human's and a dashboard's page: a few seconds stale is fine
TIMEOUT_SECONDS = 1.0  # a slow registry must not hold /metadata
UNKNOWN = "unknown"


def shareable_uri(uri: str) -> str:
    """The tracking URI without user and password, fit to be written into a bento."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def sqlite_champion(uri: str, name: str) -> str | None:
    """The champion's version in a SQLite tracking store, opened read-only; None if no alias."""
    path = uri.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=TIMEOUT_SECONDS) as db:
        try:  # MLflow 3 keys aliases by workspace too; older stores have no such column
            rows = db.execute(
                "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ? "
                "AND workspace = 'default'",
                (name, ALIAS),
            ).fetchall()
        except sqlite3.OperationalError:
            rows = db.execute(
                "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?", (name, ALIAS)
            ).fetchall()
    return str(rows[0][0]) if rows else None


def rest_champion(uri: str, name: str, env: Mapping[str, str]) -> str | None:
    """The champion's version from a tracking server's REST API; None if no alias."""
    import httpx

    headers, auth = {}, None
    if env.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
    elif env.get("MLFLOW_TRACKING_USERNAME"):
        auth = (env["MLFLOW_TRACKING_USERNAME"], env.get("MLFLOW_TRACKING_PASSWORD", ""))
    response = httpx.get(
        f"{uri.rstrip('/')}/api/2.0/mlflow/registered-models/alias",
        params={"name": name, "alias": ALIAS},
        headers=headers,
        auth=auth,
        timeout=TIMEOUT_SECONDS,
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return str(response.json()["model_version"]["version"])


def champion_version(uri: str, name: str, env: Mapping[str, str]) -> str | None:
    """The registry's champion version; raises if the registry cannot be read."""
    if uri.startswith("sqlite:///"):
        return sqlite_champion(uri, name)
    if uri.startswith(("http://", "https://")):
        return rest_champion(uri, name, env)
    raise ValueError("a tracking store this service cannot read")


class RegistryView:
    """The registry's view of the served version, cached for `ttl` seconds."""

    def __init__(
        self,
        uri: str | None,
        name: str,
        served: str,
        env: Mapping[str, str] | None = None,
        ttl: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uri, self.name, self.served = uri, name, served
        self.env = os.environ if env is None else env
        self.ttl, self.clock = ttl, clock
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_meta(cls, meta: Mapping[str, Any], env: Mapping[str, str] | None = None) -> RegistryView:
        """MLFLOW_TRACKING_URI if set, else the tracking URI recorded when the model was packaged."""
        env = os.environ if env is None else env
        uri = env.get("MLFLOW_TRACKING_URI") or meta.get("tracking_uri")
        return cls(uri, str(meta["registered_model"]), str(meta["version"]), env)

    def status(self) -> dict[str, Any]:
        """`champion_version`, `served_is_champion` (True, False or "unknown") and `checked`."""
        with self._lock:
            now = self.clock()
            if self._cached is None or now - self._cached[0] >= self.ttl:
                self._cached = (now, self._read())
            return self._cached[1]

    def _read(self) -> dict[str, Any]:
        checked = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            if not self.uri:
                raise ValueError("no tracking URI")
            version = champion_version(self.uri, self.name, self.env)
        except Exception:
            return {"champion_version": UNKNOWN, "served_is_champion": UNKNOWN, "checked": checked}
        return {"champion_version": version, "served_is_champion": version == self.served, "checked": checked}
