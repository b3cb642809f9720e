"""Shared configuration: the support module on sys.path, and slow tests ordered last."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fast tests first, then the notebook runs (tests/repo), then everything marked integration,
    so that `pytest -x` fails fast. The sort is stable: file order holds within each group."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("integration"):
            return 2
        path = Path(str(item.path))
        return 1 if path.is_relative_to(TESTS / "repo") else 0

    items.sort(key=rank)
