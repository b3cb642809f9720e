"""Run a stage notebook with papermill; a failure becomes one readable line, not a traceback.

Usage (as in dvc.yaml): python -m pipelines.core.nbrun IN.ipynb OUT.ipynb [--html] [papermill options]

It creates OUT's folder (papermill does not), hands papermill its own options unchanged, and with
--html renders the executed notebook next to OUT as the run's report (outputs only, no code).

DVC runs the stage's `python` from PATH, which outside an activated venv is the system Python,
without papermill. Then this module re-runs itself with the project's .venv/bin/python. So it
imports nothing but the standard library at the top, and pipelines/__init__ must stay as light.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ERROR_NAMES = ("ParamsError", "DataError", "ContractViolation", "PipelineError", "MonitorError")
PARAMS_FILE = "params.yaml"
VENV_PYTHON = Path(".venv", "bin", "python")
# mlflow imports tqdm.auto, which warns in every kernel that ipywidgets is missing ("TqdmWarning:
# IProgress not found"): the reports show no progress bars, so the warning is only noise.
KERNEL_WARNING_FILTERS = ("ignore:IProgress not found:Warning",)


def failure_line(stage: str, ename: str, evalue: str, report: str) -> str:
    first = (evalue.strip().splitlines() or [""])[0]
    if ename in ERROR_NAMES:
        return f"ERROR {stage}: {first}"
    return f"ERROR {stage}: {ename}: {first} (traceback in {report})"


def project_venv_python(start: Path) -> Path | None:
    """The .venv/bin/python of the nearest project (a folder with params.yaml) from `start` up.

    Walking past a project without one also finds the user's venv from a DVC experiment's
    temporary copy, which lives inside the project (.dvc/tmp/exps/...).
    """
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / PARAMS_FILE).is_file() and (folder / VENV_PYTHON).is_file():
            return folder / VENV_PYTHON
    return None


def ensure_papermill(argv: list[str], stage: str) -> None:
    """Return if papermill imports here; else re-exec with the project's venv, or exit with one line."""
    if importlib.util.find_spec("papermill") is not None:
        return
    venv_python = project_venv_python(Path.cwd())
    if venv_python is not None and venv_python.parents[1].resolve() != Path(sys.prefix).resolve():
        # As if the venv were activated: its tools come first on PATH for the kernels too.
        os.environ["PATH"] = f"{venv_python.parent}{os.pathsep}{os.environ.get('PATH', '')}"
        module = ["-m", __spec__.name] if __spec__ is not None else [str(Path(__file__).resolve())]
        os.execv(venv_python, [str(venv_python), *module, *argv])
    print(
        f"ERROR {stage}: papermill is not installed for {sys.executable}; "
        "run `make run` or `source .venv/bin/activate`",
        file=sys.stderr,
    )
    raise SystemExit(1)


def kernel_environment() -> None:
    """Settings the notebook kernels inherit from this process's environment."""
    # One OpenMP thread per kernel unless the user says otherwise: on a busy 2-core machine,
    # histogram gradient boosting's spin-waiting threads took 365 s instead of 20 s.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # MLflow's INFO lines (creating the store's tables) would land in the reports as stderr.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    given = [f for f in os.environ.get("PYTHONWARNINGS", "").split(",") if f]
    os.environ["PYTHONWARNINGS"] = ",".join(dict.fromkeys([*KERNEL_WARNING_FILTERS, *given]))


def render_html(notebook: Path) -> Path:
    """The executed notebook as HTML beside it: outputs only. The .ipynb keeps the code."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name="lab", exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    )
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, 4))
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


def execute(args: list[str], html: bool = False) -> str | None:
    """Run papermill with `args` (IN OUT [options]); None on success, else the one failure line.
    Callers have checked that papermill imports (`ensure_papermill`)."""
    output = Path(args[1])
    stage = output.stem
    output.parent.mkdir(parents=True, exist_ok=True)
    kernel_environment()

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
    if failure is None and html:
        render_html(output)
    return failure


def main(argv: list[str]) -> int:
    html = "--html" in argv
    args = [a for a in argv if a != "--html"]
    if len(args) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    ensure_papermill(argv, Path(args[1]).stem)
    failure = execute(args, html)
    if failure is not None:
        print(failure, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
