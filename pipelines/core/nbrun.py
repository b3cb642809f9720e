"""Run a stage notebook with papermill; a failure becomes one readable line, not a traceback.

Usage (as in dvc.yaml): python -m pipelines.core.nbrun IN.ipynb OUT.ipynb [--html] [papermill options]

It creates OUT's folder (papermill does not), hands papermill its own options unchanged, and with
--html renders the executed notebook next to OUT as the run's report.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ERROR_NAMES = ("ParamsError", "DataError", "ContractViolation", "PipelineError")


def failure_line(stage: str, ename: str, evalue: str, report: str) -> str:
    first = (evalue.strip().splitlines() or [""])[0]
    if ename in ERROR_NAMES:
        return f"ERROR {stage}: {first}"
    return f"ERROR {stage}: {ename}: {first} (traceback in {report})"


def render_html(notebook: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(notebook, 4))
    target = notebook.with_suffix(".html")
    target.write_text(body)
    return target


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 (ours and our children's) at `path` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.dup2(target, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


def main(argv: list[str]) -> int:
    html = "--html" in argv
    args = [a for a in argv if a != "--html"]
    if len(args) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    output = Path(args[1])
    stage = output.stem
    output.parent.mkdir(parents=True, exist_ok=True)
    # One OpenMP thread per kernel unless the user says otherwise: on a busy 2-core machine,
    # histogram gradient boosting's spin-waiting threads took 365 s instead of 20 s.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    # jsonschema (via nbformat) imports rfc3987_syntax when installed (jupyterlab brings it), and
    # that builds a parser at import: ~1 s idle, ~3 s busy, per stage. Notebooks never use the
    # IRI formats it validates, so jsonschema runs without it.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    from papermill.cli import papermill as papermill_cli
    from papermill.exceptions import PapermillExecutionError

    # The kernel inherits our stderr, and a kernel stopped right after a failing cell can print a
    # traceback of its own shutdown. Everything papermill and the kernel print goes to a log
    # beside the report; the terminal gets one line.
    log = output.with_suffix(".log")
    with _stderr_to(log):
        try:
            papermill_cli.main(
                # Quiet: every section of params.yaml arrives, and papermill warns about unused ones.
                args=[*args, "-p", "output_notebook", str(output), "--log-level", "ERROR"],
                standalone_mode=False,
            )
            failure = None
        except PapermillExecutionError as exc:
            failure = failure_line(stage, exc.ename, exc.evalue, str(output))
        except Exception as exc:  # papermill's own errors: missing notebook, bad option, kernel
            failure = failure_line(stage, type(exc).__name__, str(exc), str(log))
    if failure is not None:
        print(failure, file=sys.stderr)
        return 1
    if html:
        render_html(output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
