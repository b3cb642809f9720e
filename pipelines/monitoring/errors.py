"""The one error the monitor raises for unusable logs: one readable line, never their content.
It lives with the project's other errors (core/errors.py), so the notebook runner knows its name."""

from __future__ import annotations

from pipelines.core.errors import MonitorError

__all__ = ["MonitorError"]
