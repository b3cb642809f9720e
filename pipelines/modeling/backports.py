"""Fixes merged upstream but not yet in a release we can pin, applied once and only to the
versions that lack them. Each names its upstream change, so it is deleted when the pin moves.

scikit-learn #34386 (merged 2026-06-25, not in 1.9.1): `OneHotEncoder.fit` with `max_categories`
counts every text value through a Python generator (`_NaNCounter`), about 0.6 µs a value: at 1,000x
the default data (5.6M training rows) that was 52 of the linear candidate's 79.5 CPU s. Counting with
`collections.Counter` directly runs its C loop (13 times faster here) and gives the same counts; NaN
keys, which never compare equal, are summed after.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import sklearn
from sklearn.preprocessing import _encoders
from sklearn.utils import _encode
from sklearn.utils._missing import is_scalar_nan

FIXED_IN = (1, 10)  # the first scikit-learn release with #34386
_slow_get_counts = _encode._get_counts


def needs_count_fix(version: str = sklearn.__version__) -> bool:
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) < FIXED_IN


def get_counts(values: np.ndarray, uniques: np.ndarray) -> np.ndarray:
    """scikit-learn's `_get_counts`: the count of each of `uniques` in `values`, in their order."""
    if values.dtype.kind not in "OU":
        return _slow_get_counts(values, uniques)  # numbers: already numpy's sort-based count
    counter: Counter[Any] = Counter(values.tolist())
    # Over the distinct keys only: each NaN object is its own key, since NaN != NaN.
    nan_count = sum(n for key, n in counter.items() if is_scalar_nan(key))
    output = np.zeros(len(uniques), dtype=np.int64)
    for i, item in enumerate(uniques):
        output[i] = nan_count if is_scalar_nan(item) else counter.get(item, 0)
    return output


def apply() -> None:
    """Installs the backports this scikit-learn needs (idempotent)."""
    if needs_count_fix():
        _encode._get_counts = get_counts
        _encoders._get_counts = get_counts
