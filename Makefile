# ftsweep: `make help` lists the targets.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=
PORT   ?= 5000

.PHONY: help install run test test-fast bench ui report clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "need python3.11 on PATH (or make PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU torch wheel first, so the dependency resolution below never pulls a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with ftsweep and its pinned dependencies

run: $(STAMP) ## fine-tune MiniLM on IMDB with the defaults and log to MLflow (ARGS="method=lora ...")
	$(PY) -m ftsweep $(ARGS)

test: $(STAMP) ## run the whole test suite, slow tests included
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP) ## the fast tests only
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: $(STAMP) ## benchmarks (minutes): writes benchmarks/results.json and benchmarks/README.md
	$(PY) benchmarks/bench.py $(ARGS)

ui: $(STAMP) ## MLflow UI over the project's store on 127.0.0.1 (PORT=5000)
	@echo "MLflow UI: http://127.0.0.1:$(PORT)  (Ctrl-C stops it)"
	$(VENV)/bin/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" --host 127.0.0.1 --port $(PORT)

report: $(STAMP) ## trade-off report for the latest sweep (ARGS="--sweep RUN_ID --out DIR")
	$(PY) -m ftsweep.report $(ARGS)

clean: ## remove outputs and the local MLflow store (keeps .venv)
	rm -rf outputs multirun/*/ mlflow.db mlartifacts
