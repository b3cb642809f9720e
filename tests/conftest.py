"""Shared configuration: the test tiers run fastest first.

Tiers: tests/unit (pure functions and in-process objects), tests/repo (the repository's own
files, and the notebooks on tiny data), tests/service (a real `bentoml serve` on 127.0.0.1),
tests/integration (the real pipeline, registry and batch scoring in a copy of the project).
The helpers package (tests/helpers) is importable because pyproject sets `pythonpath`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fast tests first, then the notebook runs (tests/repo), then everything marked integration,
    so that `pytest -x` fails fast. The sort is stable: file order holds within each group."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("integration"):
            return 2
        path = Path(str(item.path))
        return 1 if path.is_relative_to(TESTS / "repo") else 0

    items.sort(key=rank)
