"""Shared configuration: the support module on sys.path, and slow tests ordered last."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Unit tests first, then the notebook runs, then the DVC runs: `pytest -x` fails fast.
_ORDER = {"unit": 0, "repo": 1, "integration": 2}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        parts = Path(str(item.path)).parts
        return next((_ORDER[p] for p in reversed(parts) if p in _ORDER), 1)

    items.sort(key=rank)  # stable: the file order holds within each group
