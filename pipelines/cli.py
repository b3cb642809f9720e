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
    from pipelines.release import on_pass, promotion

    decision = promotion.run_promotion(root, params)
    decision = on_pass.apply(root, params, decision, reason="promote")  # rollout.on_pass: rollout
    promotion.record(decision, params, root)
    packaged = _repackaged(root, params, "the promotion") if decision.get("promoted") else ""
    return promotion.summary(decision) + packaged


def retrain(root: Path, params: dict[str, Any], args: argparse.Namespace) -> str:
    from pipelines.release import retrain as retraining

    decision = retraining.run(root, params, source=args.source, trigger=args.trigger)
    packaged = _repackaged(root, params, "the retrain's decision") if decision.get("promoted") else ""
    return retraining.summary(decision) + packaged


def rollback(root: Path, params: dict[str, Any], args: argparse.Namespace) -> str:
    from pipelines.release import promotion

    decision = promotion.run_rollback(root, params, args.reason)
    promotion.record(decision, params, root)
    return promotion.summary(decision) + _repackaged(root, params, "the rollback")


def _repackaged(root: Path, params: dict[str, Any], done: str | None = None) -> str:
    """The roles as the registry now has them, in the BentoML store (running services follow the
    registry and load from there); the end of the command's one line. Only in a project that
    has been packaged (`paths.bento` exists): one that never served has nothing to keep in step.
    `done` names the registry change already made, for the error if packaging fails."""
    from pipelines.core.errors import PipelineError
    from pipelines.release import package as packaging

    bento = (params.get("paths") or {}).get("bento")
    if done is not None and not (bento and (root / bento).is_file()):
        return ""
    try:
        record = packaging.package_models(root, params)
    except PipelineError as exc:
        if done is None:
            raise
        raise PipelineError(
            f"{done} is in the registry, but packaging failed ({exc}); run `make package`"
        ) from None
    line = f"; packaged champion v{record['registry_version']} ({record['model']})"
    if "challenger" in record:
        found = record["challenger"]
        line += f", challenger v{found['registry_version']} ({found['model']})"
    return line


def rollout(root: Path, params: dict[str, Any], args: argparse.Namespace) -> str:
    from pipelines.release import rollout as rollouts

    if args.analyze:
        analyze(root, params, args)
    decision = rollouts.run(
        root,
        params,
        start_version=args.start,
        mode=args.mode,
        share=args.share,
        finish_it=args.finish,
        reason=args.reason,
    )
    packaged = _repackaged(root, params, "the rollout change") if args.start or args.finish else ""
    return rollouts.summary(decision) + packaged


def analyze(root: Path, params: dict[str, Any], args: argparse.Namespace) -> None:
    """`rollout --analyze [--watch]`: its own exit codes, 0 pass, inconclusive or finished, 1 fail
    (the rollout was aborted), 2 when it cannot analyse (params, registry, log): one line each."""
    from pipelines.core.errors import PipelineError
    from pipelines.monitoring import monitor
    from pipelines.release import rollout as rollouts

    folder = Path(args.log_dir) if args.log_dir else monitor.log_dir(root)
    try:
        if not args.watch:
            result = rollouts.run_analysis(root, params, folder)
            print(result["line"])
            code = 1 if result.get("decision", {}).get("outcome") == "fail" else 0
        else:
            code = rollouts.watch(
                root, params, folder, lambda line: print(line, flush=True), args.max_seconds
            )
    except PipelineError as exc:
        print(f"ERROR rollout: {str(exc).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code)


def package(root: Path, params: dict[str, Any], args: argparse.Namespace) -> str:
    from pipelines.release import package as packaging

    if args.models_only:
        return "PACKAGED" + _repackaged(root, params).removeprefix("; packaged")
    record = packaging.package(root, params)
    return (
        f"PACKAGED {record['bento']} with {record['model']} "
        f"(champion v{record['registry_version']}, served by {record['runtime']})"
    )


def batch(root: Path, params: dict[str, Any], args: argparse.Namespace) -> str:
    from pipelines.batch import scoring
    from pipelines.core.errors import ParamsError

    rejects = args.rejects or scoring.rejects_path(args.source, args.target)
    section = params.get("batch") or {}
    chunk_rows = args.chunk_rows
    if chunk_rows is None:
        chunk_rows = section.get("chunk_rows")
        if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 1:
            raise ParamsError("batch.chunk_rows in params.yaml must be a positive integer")
    engine = scoring.local_engine
    if args.engine == "dask":
        from pipelines.batch import distributed

        # batch.timeout_seconds once params.yaml has it; the module's default until then.
        timeout = section.get("timeout_seconds", distributed.TIMEOUT_SECONDS)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ParamsError("batch.timeout_seconds in params.yaml must be a positive number")
        engine = distributed.dask_engine(args.scheduler, float(timeout))
    elif args.engine == "spark":
        from pipelines.batch import distributed, spark

        spark.check_local_paths(args.source, args.target, rejects)
        timeout = section.get("timeout_seconds", distributed.TIMEOUT_SECONDS)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ParamsError("batch.timeout_seconds in params.yaml must be a positive number")
        engine = spark.spark_engine(float(timeout))
    scored, refused = scoring.score_file(root, params, args.source, args.target, rejects, chunk_rows, engine)
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
    retraining = add(
        retrain.__name__,
        retrain,
        "new labelled rows -> a new DVC data version -> dvc repro -> the gate (docs/retraining.md)",
    )
    retraining.add_argument(
        "--in",
        dest="source",
        help="labelled table with the source's columns (default: the service's log + labels)",
    )
    retraining.add_argument(
        "--trigger",
        default="labels",
        choices=("labels", "drift", "performance", "schedule"),
        help="recorded with the decision",
    )
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
    action.add_argument(
        "--analyze",
        action="store_true",
        help="judge the current step: pass advances, fail aborts (exit 1), inconclusive waits",
    )
    rolling.add_argument(
        "--watch", action="store_true", help="--analyze every rollout.poll_seconds until off"
    )
    rolling.add_argument("--max-seconds", type=float, help="--watch stops after this long")
    rolling.add_argument(
        "--log-dir", help="--analyze: the service's log folder (default: PREDICTION_LOG_DIR)"
    )
    rolling.add_argument(
        "--share", type=float, help="canary only: the challenger's share, 0-1 (default: its step's)"
    )
    rolling.add_argument("--reason", default="manual", help="recorded with the decision")
    add(
        package.__name__,
        package,
        "import the champion (and a challenger under rollout) into BentoML, compile it, build the bento",
    ).add_argument(
        "--models-only",
        action="store_true",
        help="only the models the registry's roles name, no bento (what running services load)",
    )
    scoring = add(batch.__name__, batch, "score a CSV or Parquet file with the packaged champion")
    scoring.add_argument("source", help="input table (.csv, .tsv, .parquet; text may end .gz, .bz2, .xz)")
    scoring.add_argument("target", help="output table, any of the input's formats")
    scoring.add_argument("--rejects", help="refused rows (default: beside OUT, x.csv.gz -> x.rejects.csv.gz)")
    scoring.add_argument(
        "--chunk-rows", type=int, help="rows read and scored at a time (default: batch.chunk_rows)"
    )
    scoring.add_argument(
        "--engine",
        choices=("local", "dask", "spark"),
        default="local",
        help="local: this process; dask: a Dask cluster (a LocalCluster of this machine by default); "
        "spark: Spark tasks (local[2], or $SPARK_MASTER; needs `make spark-env`)",
    )
    scoring.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="--engine dask: the scheduler of a running cluster (tcp://host:port)",
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
    if args.command == "rollout" and not args.analyze and (args.watch or args.max_seconds or args.log_dir):
        parser.error("rollout: --watch, --max-seconds and --log-dir go with --analyze")
    if args.command == "batch" and args.scheduler and args.engine != "dask":
        parser.error("batch: --scheduler goes with --engine dask")
    if args.command == "rollout" and args.analyze and args.share is not None:
        parser.error("rollout: --share does not go with --analyze")
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
