"""API keys: who may call the service, and the explicit setting that serves without any.

Keys come from API_KEY (comma-separated) or from the file named by API_KEY_FILE (one a line;
`#` comment lines and blank lines are ignored); the file wins when both are set. Whatever is
configured must hold at least one usable key, else the service refuses to start: a typo must
never open it. Serving without keys takes API_AUTH=off, and nothing else.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

AUTH_SETTING = "API_AUTH"  # `off`: serve without keys, on purpose


class KeyConfigError(ValueError):
    """The key settings cannot be used; the message is one line and never holds a key."""


def _printable(key: str) -> bool:
    """Visible ASCII only: what a Bearer header can carry, byte for byte."""
    return all(0x21 <= ord(c) <= 0x7E for c in key)


def _checked(keys: Iterable[str], source: str) -> list[str]:
    usable = [k for k in keys if k]
    if not usable:
        raise KeyConfigError(f"{source} holds no key; set a key, or {AUTH_SETTING}=off to serve without keys")
    bad = [i for i, k in enumerate(usable, 1) if not _printable(k)]
    if bad:
        raise KeyConfigError(
            f"{source}: key {bad[0]} has a character other than visible ASCII (spaces and non-ASCII are refused)"
        )
    return usable


def _file_keys(path: str) -> list[str]:
    if not path.strip():
        raise KeyConfigError("API_KEY_FILE is set but names no file")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise KeyConfigError(f"API_KEY_FILE cannot be read: {reason}") from None
    lines = (line.strip() for line in text.splitlines())
    return _checked((line for line in lines if not line.startswith("#")), "API_KEY_FILE")


class ApiKeys:
    """The accepted bearer keys, or none at all when the service is open on purpose."""

    def __init__(self, keys: Iterable[str], source: str = "the key list") -> None:
        self._keys = [k.encode("ascii") for k in _checked(keys, source)]

    @classmethod
    def off(cls) -> ApiKeys:
        """No key needed: only from an explicit API_AUTH=off."""
        keys = cls.__new__(cls)
        keys._keys = []
        return keys

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiKeys:
        """The keys the environment configures; KeyConfigError (one line) when it configures none."""
        env = os.environ if env is None else env
        setting = env.get(AUTH_SETTING, "").strip().lower()
        if setting not in ("", "on", "off"):
            raise KeyConfigError(f"{AUTH_SETTING} must be 'off' (serve without keys) or unset")
        configured = "API_KEY_FILE" in env or "API_KEY" in env
        if setting == "off":
            if configured:
                raise KeyConfigError(f"{AUTH_SETTING}=off, yet API_KEY or API_KEY_FILE is set: choose one")
            return cls.off()
        if "API_KEY_FILE" in env:
            return cls(_file_keys(env["API_KEY_FILE"]), "API_KEY_FILE")
        if "API_KEY" in env:
            return cls([k.strip() for k in env["API_KEY"].split(",")], "API_KEY")
        raise KeyConfigError(
            f"no API key: set API_KEY or API_KEY_FILE, or {AUTH_SETTING}=off to serve without keys"
        )

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def mode(self) -> str:
        """What /readyz and /metadata show: `on`, or `off` when anyone may call."""
        return "on" if self._keys else "off"

    def allows(self, token: bytes | str | None) -> bool:
        """Whether a presented token is one of the keys. Bytes are compared as sent, so a token
        that is not ASCII simply does not match."""
        if not self._keys:
            return True
        given = token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token or b""
        # Compare with every key, in constant time, so timing reveals neither key nor match.
        matches = [hmac.compare_digest(given, key) for key in self._keys]
        return any(matches)


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header (raw ASGI headers), else None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token if scheme.lower() == b"bearer" and token else None
    return None
