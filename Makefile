# Two commands set everything up on a machine with Python 3.11, git and make:
#   make run    build the environment from the lock, then run the pipeline
#   make test   build the environment from the lock, then run the tests
SHELL := bash
.DEFAULT_GOAL := help
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV)/bin)
ENV_STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_ENABLE_TELEMETRY := false
export DO_NOT_TRACK := true

.PHONY: help env spark-env run repro promote package serve container batch-predict feedback monitor rollback rollout retrain stack-up stack-down stack-status fleet-up fleet-switch fleet-back fleet-status fleet-down test test-fast lab ui lint format lock clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(ENV_STAMP): requirements.lock requirements-bootstrap.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-bootstrap.lock
	# Byte-compile at install: the stages import mlflow and sklearn in every notebook kernel.
	$(BIN)/uv pip sync --quiet --python $(BIN)/python --require-hashes --compile-bytecode requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps --compile-bytecode -e .
	$(BIN)/pre-commit install --install-hooks >/dev/null 2>&1 || true
	touch $@

env: $(ENV_STAMP) ## Create .venv from the committed lock (the other targets do this first)

# The optional Spark engine (pyspark, ~480 MB) on top of the environment; rebuilt after it, since
# `uv pip sync` of the main lock removes what that lock does not name.
SPARK_STAMP := $(VENV)/.spark-installed
$(SPARK_STAMP): $(ENV_STAMP) requirements-spark.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --require-hashes --compile-bytecode -r requirements-spark.lock
	touch $@

spark-env: $(SPARK_STAMP) ## Add the optional Spark batch engine (pyspark) to .venv

run: $(ENV_STAMP) ## Run the pipeline on the default data, gate and promote, package the champion
	dvc repro
	python -m pipelines promote
	python -m pipelines package

promote: $(ENV_STAMP) ## Gate the best candidate against the champion; promote it if it passes
	python -m pipelines promote

package: $(ENV_STAMP) ## Import the champion into BentoML and build the bento
	python -m pipelines package

# The service refuses to start without keys unless API_AUTH=off says so. With neither set,
# `make serve` makes a key once into a git-ignored file (0600), and that file is the key list.
LOCAL_KEYS := .secrets/api-keys
serve: $(ENV_STAMP) ## Serve the champion on 127.0.0.1:3000 (keys: API_KEY / API_KEY_FILE, else a local key file)
	@if [ -z "$${API_KEY:-}$${API_KEY_FILE:-}" ] && [ "$${API_AUTH:-}" != off ]; then
	  if [ ! -s $(LOCAL_KEYS) ]; then
	    (umask 077 && mkdir -p $(dir $(LOCAL_KEYS)) && python -c 'import secrets; print(secrets.token_urlsafe(32))' > $(LOCAL_KEYS))
	  fi
	  export API_KEY_FILE=$(abspath $(LOCAL_KEYS))
	  echo "API key: the line in $(LOCAL_KEYS); send it as 'Authorization: Bearer <key>'" >&2
	fi
	bentoml serve service:Predictor --host 127.0.0.1 --port 3000

container: $(ENV_STAMP) ## Build the bento's OCI image (needs a Docker or podman engine)
	bentoml containerize "$$(python -c 'import json; print(json.load(open("reports/bento.json"))["bento"])')"

batch-predict: $(ENV_STAMP) ## Score a CSV/Parquet file (local or s3://) with the packaged champion: IN=… OUT=… [ENGINE=local|dask|spark] [SCHEDULER=tcp://host:8786]
	@test -n "$(IN)" -a -n "$(OUT)" || { echo "usage: make batch-predict IN=input.csv OUT=scored.parquet [ENGINE=local|dask|spark] [SCHEDULER=address]" >&2; exit 2; }
	python -m pipelines batch "$(IN)" "$(OUT)" --engine "$${ENGINE:-local}" $(if $(SCHEDULER),--scheduler "$(SCHEDULER)")

feedback: $(ENV_STAMP) ## Append ground-truth labels (request_id, record, label) from a CSV/Parquet file: IN=…
	@test -n "$(IN)" || { echo "usage: make feedback IN=labels.csv" >&2; exit 2; }
	python -m pipelines feedback "$(IN)"

monitor: $(ENV_STAMP) ## Judge the recent prediction log (PREDICTION_LOG_DIR, default monitoring/): reports/monitor.{json,html}; exit 0 OK 1 WARNING 2 CRITICAL 3 UNKNOWN
	python -m pipelines monitor

retrain: $(ENV_STAMP) ## New labelled rows -> new data version -> dvc repro -> gate: [IN=labelled.csv] [TRIGGER=labels|drift|performance|schedule]
	python -m pipelines retrain $(if $(IN),--in "$(IN)") --trigger "$${TRIGGER:-labels}"

rollback: $(ENV_STAMP) ## Move the champion alias back one step (REASON="...")
	python -m pipelines rollback --reason "$${REASON:-manual rollback}"

rollout: $(ENV_STAMP) ## Start, step or end a rollout: MODE=shadow|canary|off [SHARE=0.1], START=<version>, FINISH=1, or ANALYZE=1 [WATCH=1]
	@if [ -n "$(START)" ]; then set -- --start "$(START)"
	elif [ -n "$(FINISH)" ]; then set -- --finish
	elif [ -n "$(ANALYZE)" ]; then exec python -m pipelines rollout --analyze $(if $(WATCH),--watch)
	elif [ -n "$(MODE)" ]; then set -- --mode "$(MODE)" $(if $(SHARE),--share "$(SHARE)")
	else echo "usage: make rollout MODE=shadow|canary|off [SHARE=0.1] | START=<version> | FINISH=1 | ANALYZE=1 [WATCH=1]" >&2; exit 2
	fi
	python -m pipelines rollout "$$@" --reason "$${REASON:-manual rollout}"

# The team stack (docs/team.md): PostgreSQL, SeaweedFS (S3) and an MLflow server as plain processes
# on free loopback ports, state and PIDs in .stack/. `source .stack/env` points this shell at it.
stack-up: $(ENV_STAMP) ## Start the team stack: PostgreSQL + S3 store + MLflow server (state in .stack/)
	python -m pipelines.team.stack up

stack-down: $(ENV_STAMP) ## Stop the team stack by PID (its data stays in .stack/)
	python -m pipelines.team.stack down

stack-status: $(ENV_STAMP) ## Show the team stack's processes, ports and health
	python -m pipelines.team.stack status

# A fleet of service replicas behind HAProxy (docs/team.md), with a blue-green switch.
fleet-up: $(ENV_STAMP) ## Start REPLICAS (default 2) service replicas of the packaged bento behind HAProxy
	python -m pipelines.team.fleet up --replicas "$${REPLICAS:-2}"

fleet-switch: $(ENV_STAMP) ## Start the idle colour's replicas on the packaged bento, then switch traffic to them
	python -m pipelines.team.fleet switch

fleet-back: $(ENV_STAMP) ## Switch traffic back to the previous colour (still running)
	python -m pipelines.team.fleet back

fleet-status: $(ENV_STAMP) ## Show the fleet: colours, replicas, which one is live
	python -m pipelines.team.fleet status

fleet-down: $(ENV_STAMP) ## Stop HAProxy and every replica by PID
	python -m pipelines.team.fleet down

repro: run ## Same as run

test: $(ENV_STAMP) $(SPARK_STAMP) ## Run the whole test suite (with the optional Spark engine)
	pytest

test-fast: $(ENV_STAMP) ## Run the unit tests only
	pytest -m "not integration"

lab: $(ENV_STAMP) ## Open JupyterLab with the project's kernel on 127.0.0.1
	jupyter lab --ip 127.0.0.1 --no-browser

ui: $(ENV_STAMP) ## Open the MLflow UI on 127.0.0.1:5000, on the project's store (with the team stack: the server's own UI)
	uri="$$(python -m pipelines tracking-uri)"
	case "$$uri" in http://*|https://*) echo "The tracking server is its own UI: open $$uri"; exit 0;; esac
	mlflow ui --backend-store-uri "$$uri" --host 127.0.0.1 --port 5000 --workers 1

lint: $(ENV_STAMP) ## Check style with ruff
	ruff check pipelines tests bench
	ruff format --check pipelines tests bench

format: $(ENV_STAMP) ## Format the code with ruff
	ruff format pipelines tests bench
	ruff check --fix pipelines tests bench

lock: ## Re-pin requirements.lock (and requirements-spark.lock) from pyproject.toml (needs the package index)
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes \
		--no-emit-index-url --quiet -o requirements.lock
	# The spark extra alone, constrained by the main lock so that both install into one environment.
	printf 'pyspark>=4.1\n' | $(BIN)/uv pip compile - -c requirements.lock --python-version 3.11 \
		--generate-hashes --no-emit-index-url --quiet -o requirements-spark.lock

clean: ## Remove the environment and caches (keeps data, models and stores)
	rm -rf $(VENV) .pytest_cache .ruff_cache
