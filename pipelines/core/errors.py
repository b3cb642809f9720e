"""Errors a stage reports as one readable line: they name the problem, never a traceback."""


class PipelineError(Exception):
    """A problem with the user's data or params, as opposed to a bug in the code."""


class ParamsError(PipelineError):
    """params.yaml asks for something that cannot be done."""


class DataError(PipelineError):
    """The data cannot be read, or is unusable before any contract applies."""


class ContractViolation(PipelineError):
    """The data breaks a hard rule of the data contract."""


class MonitorError(PipelineError):
    """The prediction log, outcome counts or labels cannot be read: a missing folder, no lines, or a
    corrupt line. The message names the file (and line, where known), never what the line holds."""
