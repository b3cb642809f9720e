"""The one error the monitor raises for unusable logs: one readable line, never their content."""

from __future__ import annotations

from pipelines.core.errors import PipelineError


class MonitorError(PipelineError):
    """The prediction log, outcome counts or labels cannot be read: a missing folder, no lines, or a
    corrupt line. The message names the file (and line, where known), never what the line holds."""
