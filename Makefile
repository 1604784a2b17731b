# genbench developer tasks. `make help` lists them. CI runs `make install` then `make test` (see .ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help install test-deps test test-slow lint format run bench classifiers leaderboard results results-render clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

install:  ## create .venv and install genbench with its dev tools (torch/torchvision pinned as a pair)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"

test-deps:  ## system packages the tests need (headless Chromium for the leaderboard page)
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: test-deps  ## the default test suite (fast; slow tests excluded)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: test-deps  ## only the slow tests (DDP per model, long runs)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

lint:  ## ruff lint and format check
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests

format:  ## ruff autofix and format
	$(PY) -m ruff check --fix src tests
	$(PY) -m ruff format src tests

run:  ## train the default model on the embedded default dataset
	$(PY) -m genbench

bench:  ## throughput and memory benchmark (writes bench.json)
	$(PY) -m genbench.bench $(BENCH_ARGS)

classifiers:  ## train the feature classifiers of MNIST and Fashion-MNIST ahead of time (GENBENCH_DATA: the data root)
	$(PY) -m genbench.classifier data=mnist
	$(PY) -m genbench.classifier data=fashion_mnist

leaderboard:  ## rank finished runs under outputs/ and multirun/
	$(PY) -m genbench.leaderboard outputs multirun

results:  ## the benchmark behind results/README.md: every sweep (~3 h on 2 CPU cores; GENBENCH_DATA), then the render
	PY=$(PY) bash experiments/results.sh

results-render:  ## re-render results/ from the finished runs under outputs/results
	$(PY) -m genbench.results --layout results/layout.yaml --out results

clean:  ## remove run outputs and caches (not .venv)
	rm -rf outputs multirun lightning_logs .pytest_cache .ruff_cache
