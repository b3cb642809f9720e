"""Canary routing: which arm (champion or challenger) answers a request, sticky by a routing key.

The key is the `X-Routing-Key` header when it is usable, else the text of a record field that
`params.yaml` names (an id column, read from the request's first record), else there is none.
A header that is not usable (empty, too long, not visible ASCII) is ignored, never refused: routing
is a rollout detail, and a client must not fail because of it.

A key maps to a point u in [0, 1) by BLAKE2b of the salt's digest and the key, not by Python's
`hash()`, which is salted per process: the same key lands in the same arm in every worker and after
every restart. The challenger answers when u < share, so the split is monotone in the share: a
key on the challenger at 5 % stays there at 25 % and 50 %, and canary steps never move a user back
and forth between models. A new salt (the challenger's version) reshuffles who is in the canary,
so one rollout's canary users are not always the next one's. Without a key the arm is drawn at random.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Literal

Arm = Literal["champion", "challenger"]
CHAMPION: Arm = "champion"
CHALLENGER: Arm = "challenger"
ROUTING_HEADER = b"x-routing-key"  # as ASGI gives header names: lower case bytes
MAX_KEY_LENGTH = 128  # characters; a longer header is ignored (ids and session tokens fit)
_SCALE = 2.0**-53  # 53 random bits make a double in [0, 1) that never rounds up to 1.0


def usable_key(value: str | bytes | None) -> str | None:
    """The header's key (surrounding spaces trimmed), or None when it is absent, empty, longer
    than MAX_KEY_LENGTH, or has a character other than visible ASCII."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip(" \t")
    # Visible ASCII is 0x21-0x7E: printable ASCII less the space. Three C-speed scans, no loop.
    visible = text.isascii() and text.isprintable() and " " not in text
    return text if visible and 0 < len(text) <= MAX_KEY_LENGTH else None


def header_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The usable key of the first `X-Routing-Key` header among raw ASGI headers, else None."""
    for name, value in headers:
        if name.lower() == ROUTING_HEADER:
            return usable_key(value)
    return None


def field_key(records: Sequence[Mapping[str, Any]] | None, field: str | None) -> str | None:
    """The first record's value of `field` as text; None when no field is configured, there is no
    record, or the value is missing or null. A whole request goes to one arm, so one record decides."""
    if not field or not records:
        return None
    value = records[0].get(field)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    text = str(value)
    return text or None


def routing_key(
    header: str | bytes | None,
    records: Sequence[Mapping[str, Any]] | None = None,
    field: str | None = None,
) -> str | None:
    """The request's routing key: a usable header first, then the configured record field, else None."""
    return usable_key(header) or field_key(records, field)


@lru_cache(maxsize=16)
def _prefix(salt: str) -> bytes:
    """The salt's digest, made once per salt. A fixed-length prefix keeps salt and key apart:
    ("ab", "c") and ("a", "bc") hash differently, whatever either holds."""
    return hashlib.blake2b(salt.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def position(key: str, salt: str = "") -> float:
    """The key's fixed point in [0, 1) under this salt: the same in every process, uniform over keys."""
    digest = hashlib.blake2b(_prefix(salt) + key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) * _SCALE


def check_share(share: float) -> float:
    """The challenger's share as a float in [0, 1]; ValueError for anything else (NaN, booleans)."""
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 <= share <= 1.0:
        raise ValueError(f"the challenger's share must be a number from 0 to 1, not {share!r}")
    return float(share)


def arm_of(key: str | None, share: float, salt: str = "", rng: Callable[[], float] = random.random) -> Arm:
    """The arm that answers a request with this key when the challenger takes `share` of traffic.
    Share 0 is always the champion and 1 always the challenger; a None key draws from `rng`."""
    share = check_share(share)
    point = rng() if key is None else position(key, salt)
    return CHALLENGER if point < share else CHAMPION
