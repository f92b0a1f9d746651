# ftsweep: `make help` lists the targets.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
ARGS   ?=
PORT   ?= 5000
DASH_PORT ?= 8080
STORAGE ?= sqlite:///multirun/optuna.db
N      ?= 500
# pytest-xdist processes for the suites: this project's machines have 2 cores
WORKERS ?= 2
KILLS  ?= 12
SEED   ?= 1

.PHONY: help install lock run test test-fast lint fuzz chaos bench gpu-kit study ui dashboard report clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(LOCK)
	@test -n "$(PYTHON)" || { echo "need python3.11 on PATH (or make PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Exactly the tested versions (torch is the CPU build), then ftsweep itself on top of them.
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP) ## create .venv with ftsweep and the exact versions in requirements.lock

lock: $(STAMP) ## re-resolve requirements.lock from pyproject.toml's ranges (uv; CPU torch)
	$(PY) -m pip install --quiet uv
	echo 'torch==2.13.0+cpu' > .venv/torch-cpu.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	    --find-links /opt/wheels -c .venv/torch-cpu.txt --no-header --annotation-style line -o $(LOCK).new
	{ sed -n '1,3p' $(LOCK); cat $(LOCK).new; } > $(LOCK).tmp && rm $(LOCK).new && mv $(LOCK).tmp $(LOCK)

run: $(STAMP) ## fine-tune MiniLM on IMDB with the defaults and log to MLflow (ARGS="method=lora ...")
	$(PY) -m ftsweep $(ARGS)

test: $(STAMP) ## run the whole test suite, slow tests included (WORKERS=2 processes)
	$(PY) -m pytest -q -n $(WORKERS) $(ARGS)

test-fast: $(STAMP) ## the fast tests only
	$(PY) -m pytest -q -n $(WORKERS) -m "not slow" $(ARGS)

lint: $(STAMP) ## ruff (lint and format check), mypy, and the import layers (import-linter); CI runs it
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fuzz: $(STAMP) ## the entry-point fuzzer with a random, larger budget (N=500 cases)
	FTSWEEP_FUZZ_EXAMPLES=$(N) FTSWEEP_FUZZ_RANDOM=1 $(PY) -m pytest -q tests/test_fuzz.py --hypothesis-show-statistics

chaos: $(STAMP) ## a joblib sweep SIGKILLed KILLS=12 times at random (SEED=1), rerun after each; checks the result
	$(PY) -m tests.chaos --kills $(KILLS) --seed $(SEED)

bench: $(STAMP) ## benchmarks (minutes): writes benchmarks/results.json and benchmarks/README.md
	$(PY) benchmarks/bench.py $(ARGS)

gpu-kit: $(STAMP) ## pack .gpu-kit for the GPU machine (wheels it lacks, fp16 MiniLM, an IMDB slice; docs/benchmarks.md)
	$(PY) benchmarks/gpu_kit.py build .gpu-kit

study: $(STAMP) ## the seed's study at CPU scale (~29 min on the EPYC): full vs LoRA x 3 lrs x 3 seeds on IMDB; report in docs/study/
	@date -u +"study started %Y-%m-%dT%H:%M:%SZ"
	$(PY) -m ftsweep -m hparams_search=study $(ARGS)
	$(PY) -m ftsweep.report --experiment study --out docs/study
	@date -u +"study finished %Y-%m-%dT%H:%M:%SZ"

ui: $(STAMP) ## MLflow UI over the project's store on 127.0.0.1 (PORT=5000)
	@echo "MLflow UI: http://127.0.0.1:$(PORT)  (Ctrl-C stops it)"
	$(VENV)/bin/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" --host 127.0.0.1 --port $(PORT)

dashboard: $(STAMP) ## optuna-dashboard over a sweep's Optuna storage on 127.0.0.1 (STORAGE=..., DASH_PORT=8080)
	@echo "optuna-dashboard: http://127.0.0.1:$(DASH_PORT)  (Ctrl-C stops it)"
	$(VENV)/bin/optuna-dashboard "$(patsubst journal://%,%,$(STORAGE))" --host 127.0.0.1 --port $(DASH_PORT)

report: $(STAMP) ## trade-off report for the latest sweep (ARGS="--sweep RUN_ID --out DIR")
	$(PY) -m ftsweep.report $(ARGS)

clean: ## remove outputs and the local MLflow store (keeps .venv)
	rm -rf outputs multirun/*/ mlflow.db mlartifacts
