"""Benchmark the DVC + papermill pipeline on a throwaway copy of the project.

Run from the project root (see bench/README.md):

    .venv/bin/python -m bench.pipeline                    # full, noop, overhead, scaling 1,10,100, steps
    .venv/bin/python -m bench.pipeline --parts scaling --sizes 1,10,100,1000 --timeout 1200

Parts, all measured on a copy of the git-tracked files (git init + commit, so DVC works; the MLflow
store and the DVC cache live inside the copy, nothing of the real project is touched):

  full      `dvc repro -f` on the default data, wall time (median of --full-runs), per stage
  noop      `dvc repro` with nothing to do (median of --noop-runs)
  overhead  per stage: the stage's own command (`python -m pipelines.core.nbrun ...`, from dvc.lock)
            against the notebook's code cells run as one plain Python script with the parameters
            injected as papermill injects them
  scaling   the default data repeated 1x, 10x, 100x, 1000x (unique ids, Parquet), full pipeline,
            wall time and peak memory of the process tree, per stage and per notebook cell
  steps     the pipeline's own functions, called as the notebooks call them, timed one by one in
            one process on the repeated data

Modules: `env` (paths, settings, project copies), `process` (running and watching a command),
`notebooks` (papermill's timings), `repro` (full and noop), `overhead`, `scale`, `steps` and
`worker` (the process the steps part runs), `analysis`, `report` (the printout), `cli`.

Results: a table on stdout and JSON (plus the executed notebooks of the scaling runs) in
bench/results/, which git ignores.
"""
