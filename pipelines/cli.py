"""`python -m pipelines <command>`: every operation, behind one error shell.

A problem with the user's data, params or stores (a PipelineError) is one line on stderr,
`ERROR <command>: <what>`, and exit 1; success is one line on stdout and exit 0. Commands import
what they need when they run, so `--help` and the notebook runner start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Command = Callable[[Path, dict[str, Any], argparse.Namespace], str]


def promote(root: Path, params: dict[str, Any], args: argparse.Namespace) -> str:
    from pipelines.release import promotion

    decision = promotion.run_promotion(root, params)
    promotion.record(decision, params, root)
    return promotion.summary(decision)


def rollback(root: Path, params: dict[str, Any], args: argparse.Namespace) -> str:
    from pipelines.release import promotion

    decision = promotion.run_rollback(root, params, args.reason)
    promotion.record(decision, params, root)
    return promotion.summary(decision)


def rollout(root: Path, params: dict[str, Any], args: argparse.Namespace) -> str:
    from pipelines.release import rollout as rollouts

    decision = rollouts.run(
        root,
        params,
        start_version=args.start,
        mode=args.mode,
        share=args.share,
        finish_it=args.finish,
        reason=args.reason,
    )
    return rollouts.summary(decision)


def package(root: Path, params: dict[str, Any], args: argparse.Namespace) -> str:
    from pipelines.release import package as packaging

    record = packaging.package(root, params)
    return (
        f"PACKAGED {record['bento']} with {record['model']} "
        f"(champion v{record['registry_version']}, served by {record['runtime']})"
    )


def batch(root: Path, params: dict[str, Any], args: argparse.Namespace) -> str:
    from pipelines.batch import scoring
    from pipelines.core.errors import ParamsError

    rejects = args.rejects or scoring.rejects_path(args.source, args.target)
    chunk_rows = args.chunk_rows
    if chunk_rows is None:
        chunk_rows = (params.get("batch") or {}).get("chunk_rows")
        if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
            raise ParamsError("batch.chunk_rows in params.yaml must be a positive integer")
    scored, refused = scoring.score_file(root, params, args.source, args.target, rejects, chunk_rows)
    return f"SCORED {scored} rows -> {args.target}; {refused} refused -> {rejects}"


def feedback(root: Path, params: dict[str, Any], args: argparse.Namespace) -> str:
    import os

    from pipelines.batch import feedback as labels
    from pipelines.core.errors import ParamsError
    from pipelines.serving.feedback import log_dir

    chunk_rows = (params.get("batch") or {}).get("chunk_rows")
    if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
        raise ParamsError("batch.chunk_rows in params.yaml must be a positive integer")
    labels.check_source(args.source)  # before BentoML is imported and the model loaded
    target = labels.champion_target(root, params)
    count, path = labels.ingest(args.source, root / log_dir(os.environ), target, chunk_rows)
    return f"FEEDBACK {count} labels -> {path}"


def tracking_uri(root: Path, params: dict[str, Any], args: argparse.Namespace) -> str:
    from pipelines.core import stores

    return stores.tracking_uri(stores.mlflow_store(root, params))


def _parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines",
        description="The project's operations. Stages run under `dvc repro`; these run outside the DVC graph.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    commands: dict[str, Command] = {}

    def add(name: str, fn: Command, help: str) -> argparse.ArgumentParser:
        commands[name] = fn
        return sub.add_parser(name, help=help, description=help)

    sub.add_parser(
        "notebook",
        help="run a stage notebook with papermill (dvc.yaml's stages): IN OUT [--html] [papermill options]",
        add_help=False,
    )
    sub.add_parser(
        "monitor",
        help="judge the recent prediction log against the serving model's reference: "
        "exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN [--log-dir DIR]",
        add_help=False,
    )
    add(promote.__name__, promote, "gate the best candidate against the champion; promote it if it passes")
    add(rollback.__name__, rollback, "move the champion alias back one step").add_argument(
        "--reason", default="manual rollback", help="recorded on the demoted version"
    )
    rolling = add(
        rollout.__name__, rollout, "start, step or end a rollout: the challenger alias and the rollout state"
    )
    action = rolling.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--start", metavar="VERSION", help="this registered version becomes challenger, in shadow"
    )
    action.add_argument("--mode", choices=("shadow", "canary", "off"), help="off takes the challenger out")
    action.add_argument(
        "--finish", action="store_true", help="the challenger becomes champion; the rollout ends"
    )
    rolling.add_argument(
        "--share", type=float, help="canary only: the challenger's share, 0-1 (default: its step's)"
    )
    rolling.add_argument("--reason", default="manual", help="recorded with the decision")
    add(package.__name__, package, "import the champion into BentoML, compile it, build the bento")
    scoring = add(batch.__name__, batch, "score a CSV or Parquet file with the packaged champion")
    scoring.add_argument("source", help="input table (.csv, .tsv, .parquet; text may end .gz, .bz2, .xz)")
    scoring.add_argument("target", help="output table, any of the input's formats")
    scoring.add_argument("--rejects", help="refused rows (default: beside OUT, x.csv.gz -> x.rejects.csv.gz)")
    scoring.add_argument(
        "--chunk-rows", type=int, help="rows read and scored at a time (default: batch.chunk_rows)"
    )
    add(
        feedback.__name__, feedback, "append ground-truth labels (request_id, record, label) from a table"
    ).add_argument("source", help="labels table (.csv, .tsv, .parquet; text may end .gz, .bz2, .xz)")
    add("tracking-uri", tracking_uri, "print the MLflow tracking URI the project uses (for `make ui`)")
    return parser, commands


def main(argv: list[str]) -> int:
    if argv[:1] == ["notebook"]:  # its own shell: a failing stage is named by its output notebook
        from pipelines.core import nbrun

        return nbrun.main(argv[1:])
    if argv[:1] == ["monitor"]:  # its own shell too: Nagios exit codes, UNKNOWN on any failure
        from pipelines.monitoring import command

        return command.cli(argv[1:])
    parser, commands = _parser()
    args = parser.parse_args(argv)
    from pipelines.core import config
    from pipelines.core.errors import PipelineError

    try:
        root = config.project_root()
        params = config.load_params(root / config.PARAMS_FILE)
        line = commands[args.command](root, params, args)
    except PipelineError as exc:
        print(f"ERROR {args.command}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(line)
    return 0
