"""API keys: who may call the service."""

from __future__ import annotations

import hmac
import os
from pathlib import Path


class ApiKeys:
    """Bearer keys from API_KEY (comma-separated) or the file named by API_KEY_FILE (one per line)."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys if k]

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ApiKeys:
        env = dict(os.environ if env is None else env)
        if env.get("API_KEY_FILE"):
            return cls([line.strip() for line in Path(env["API_KEY_FILE"]).read_text().splitlines()])
        return cls([k.strip() for k in env.get("API_KEY", "").split(",")])

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def allows(self, token: str | None) -> bool:
        if not self._keys:
            return True
        given = (token or "").encode()
        # Compare with every key, in constant time, so timing reveals neither key nor match.
        matches = [hmac.compare_digest(given, key) for key in self._keys]
        return any(matches)
