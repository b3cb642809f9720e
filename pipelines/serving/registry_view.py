"""The registry's roles, read without MLflow: which version is champion, which is challenger, and
the rollout's mode, share and salt.

The bento carries no MLflow, so the registry is read directly: a `sqlite:///` tracking store by
its alias and tag tables (read-only), a tracking server by its REST API. `read_roles` is what the
workers poll to follow the registry (pipelines/serving/follower.py); `RegistryView` is /metadata's
cached view of it. The registry is untrusted: a version that is not a number, an unknown mode or a
share outside 0-1 is refused (`BadRoles`), and the service then keeps what it serves.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

ALIAS = "champion"  # the alias `make promote` and `python -m pipelines rollback` move
CHALLENGER_ALIAS = "challenger"  # the version under rollout (`make rollout START=<version>`)
# The rollout's registered-model tags, as pipelines/release/registry.py writes them.
MODE_TAG, SHARE_TAG, SALT_TAG = "rollout.mode", "rollout.share", "rollout.salt"
MODES = ("off", "shadow", "canary")
CACHE_SECONDS = 5.0  # /metadata is a human's and a dashboard's page: a few seconds stale is fine
TIMEOUT_SECONDS = 1.0  # a slow registry must not hold /metadata
UNKNOWN = "unknown"


def shareable_uri(uri: str) -> str:
    """The tracking URI without user and password, fit to be written into a bento."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@contextlib.contextmanager
def _sqlite(uri: str) -> Iterator[tuple[sqlite3.Connection, str]]:
    """A SQLite tracking store opened read-only, and the WHERE clause that scopes its registry
    rows: MLflow 3 keys them by workspace too; older stores have no such column."""
    path = uri.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=TIMEOUT_SECONDS) as db:
        scope = " AND workspace = 'default'"
        try:
            db.execute("SELECT workspace FROM registered_model_aliases LIMIT 0")
        except sqlite3.OperationalError:
            scope = ""
        yield db, scope


def sqlite_champion(uri: str, name: str) -> str | None:
    """The champion's version in a SQLite tracking store, opened read-only; None if no alias."""
    with _sqlite(uri) as (db, scope):
        rows = db.execute(
            f"SELECT version FROM registered_model_aliases WHERE name = ?{scope} AND alias = ?", (name, ALIAS)
        ).fetchall()
    return str(rows[0][0]) if rows else None


def rest_champion(uri: str, name: str, env: Mapping[str, str]) -> str | None:
    """The champion's version from a tracking server's REST API; None if no alias."""
    response = _rest_get(uri, "registered-models/alias", {"name": name, "alias": ALIAS}, env)
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


class BadRoles(ValueError):
    """The registry holds a role or rollout value this service will not act on."""


@dataclass(frozen=True)
class Roles:
    """What the registry asks of the service. `mode` is `off` whenever there is no challenger."""

    champion: str | None
    challenger: str | None = None
    mode: str = "off"
    share: float = 0.0
    salt: str = ""


def _version(value: Any, what: str) -> str | None:
    if value is None:
        return None
    text = str(value)
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        raise BadRoles(f"the {what} alias does not name a version number")
    return text


def roles_of(aliases: Mapping[str, Any], tags: Mapping[str, str]) -> Roles:
    """Roles from the alias and tag values as read; `BadRoles` for values outside their domain."""
    champion = _version(aliases.get(ALIAS), ALIAS)
    challenger = _version(aliases.get(CHALLENGER_ALIAS), CHALLENGER_ALIAS)
    mode = tags.get(MODE_TAG) or "off"
    if mode not in MODES:
        raise BadRoles(f"{MODE_TAG} is not one of {', '.join(MODES)}")
    share = 0.0
    if mode == "canary":
        try:
            share = float(tags.get(SHARE_TAG) or "")
        except ValueError:
            raise BadRoles(f"{SHARE_TAG} is not a number") from None
        if not 0.0 <= share <= 1.0:  # NaN fails this too
            raise BadRoles(f"{SHARE_TAG} is not a share from 0 to 1")
    salt = str(tags.get(SALT_TAG) or "")[:64]
    if challenger is None or challenger == champion or mode == "off":
        return Roles(champion)
    return Roles(champion, challenger, mode, share, salt)


def sqlite_roles(uri: str, name: str) -> Roles:
    with _sqlite(uri) as (db, scope):
        aliases = dict(
            db.execute(
                f"SELECT alias, version FROM registered_model_aliases WHERE name = ?{scope} AND alias IN (?, ?)",
                (name, ALIAS, CHALLENGER_ALIAS),
            ).fetchall()
        )
        tags = dict(
            db.execute(
                f"SELECT key, value FROM registered_model_tags WHERE name = ?{scope} AND key IN (?, ?, ?)",
                (name, MODE_TAG, SHARE_TAG, SALT_TAG),
            ).fetchall()
        )
    return roles_of(aliases, tags)


def _rest_get(uri: str, endpoint: str, params: dict[str, str], env: Mapping[str, str]) -> Any:
    import httpx

    headers, auth = {}, None
    if env.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
    elif env.get("MLFLOW_TRACKING_USERNAME"):
        auth = (env["MLFLOW_TRACKING_USERNAME"], env.get("MLFLOW_TRACKING_PASSWORD", ""))
    return httpx.get(
        f"{uri.rstrip('/')}/api/2.0/mlflow/{endpoint}",
        params=params,
        headers=headers,
        auth=auth,
        timeout=TIMEOUT_SECONDS,
    )


def rest_roles(uri: str, name: str, env: Mapping[str, str]) -> Roles:
    response = _rest_get(uri, "registered-models/get", {"name": name}, env)
    if response.status_code == 404:
        return Roles(None)
    response.raise_for_status()
    model = response.json().get("registered_model") or {}
    aliases = {a.get("alias"): a.get("version") for a in model.get("aliases") or [] if isinstance(a, dict)}
    tags = {t.get("key"): t.get("value") for t in model.get("tags") or [] if isinstance(t, dict)}
    return roles_of(aliases, tags)


def read_roles(uri: str | None, name: str, env: Mapping[str, str]) -> Roles:
    """The registry's roles; raises if the registry cannot be read or holds values out of domain."""
    if not uri:
        raise ValueError("no tracking URI")
    if uri.startswith("sqlite:///"):
        return sqlite_roles(uri, name)
    if uri.startswith(("http://", "https://")):
        return rest_roles(uri, name, env)
    raise ValueError("a tracking store this service cannot read")


def tracking_uri(meta: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    """MLFLOW_TRACKING_URI if set, else the tracking URI recorded when the model was packaged."""
    return env.get("MLFLOW_TRACKING_URI") or meta.get("tracking_uri")


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
        uri = tracking_uri(meta, env)
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
