"""The scikit-learn backport counts exactly as scikit-learn's own function does (the oracle is the
original, kept aside before the backport is applied), and fitted encoders come out the same."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import OneHotEncoder
from sklearn.utils import _encode

from pipelines.modeling import backports


def cases():
    rng = np.random.default_rng(7)
    words = np.array(["Yes", "No", "No internet service", "é", ""], dtype=object)
    text = words[rng.integers(0, len(words), 5000)]
    with_missing = text.copy()
    with_missing[rng.integers(0, 5000, 300)] = None
    with_missing[rng.integers(0, 5000, 300)] = np.nan
    with_missing[rng.integers(0, 5000, 50)] = float("nan")  # another NaN object: another key
    yield text, np.array(["", "No", "No internet service", "Yes", "é"], dtype=object)
    yield with_missing, np.array(["No", "Yes", "absent", None, np.nan], dtype=object)
    yield text.astype(str), np.array(["No", "Yes", "zzz"])  # numpy text ('U')
    yield np.array([], dtype=object), np.array(["a"], dtype=object)
    yield rng.integers(0, 4, 100).astype(float), np.arange(5, dtype=float)  # numbers: not ours


@pytest.mark.parametrize(("values", "uniques"), list(cases()))
def test_the_backport_counts_as_scikit_learn_does(values, uniques):
    got = backports.get_counts(values, uniques)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, backports._slow_get_counts(values, uniques))


def test_it_applies_only_to_releases_without_the_upstream_fix():
    assert backports.needs_count_fix("1.9.1") and backports.needs_count_fix("1.8.0")
    assert not backports.needs_count_fix("1.10.0") and not backports.needs_count_fix("2.0.0rc1")


def test_an_encoder_fitted_with_the_backport_equals_one_fitted_without(monkeypatch):
    rng = np.random.default_rng(3)
    levels = [f"level-{i}" for i in range(30)]
    weights = rng.dirichlet(np.ones(30))
    frame = pd.DataFrame({c: rng.choice(levels, 20_000, p=weights) for c in "abc"}).astype(object)

    def fitted():
        return OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=8, sparse_output=False).fit(
            frame
        )

    backports.apply()
    fast = fitted()
    assert _encode._get_counts is backports.get_counts or not backports.needs_count_fix()
    monkeypatch.setattr(_encode, "_get_counts", backports._slow_get_counts)
    monkeypatch.setattr("sklearn.preprocessing._encoders._get_counts", backports._slow_get_counts)
    slow = fitted()
    for ours, theirs in zip(fast.categories_, slow.categories_, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(fast.infrequent_categories_, slow.infrequent_categories_, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(fast.transform(frame), slow.transform(frame))
