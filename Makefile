# One entry point per chore. `make help` lists them. CI and Cloud Build call only these targets.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
IMAGE ?= us-docker.pkg.dev/my-project/fleetops/components:latest
BUILD ?= build/pipelines
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: help install install-test demo test test-fast lint format compile golden bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python  ## create .venv and install fleetops with its pinned dependencies
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python  ## install fleetops with the test and dev extras
	$(BIN)/pip install --quiet -e ".[test,dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	# The scorecard test drives Debian's chromium headless (CI runs as root on Debian); it skips without it.
	command -v chromium > /dev/null || (apt-get update && apt-get install -y chromium)

demo: install  ## the local end-to-end demo on the bundled sample data
	$(BIN)/fleetops demo

test: install-test  ## the whole test suite
	$(BIN)/python -m pytest

test-fast: install-test  ## the tests without the slow layers (pipeline runs, notebooks)
	$(BIN)/python -m pytest -m "not slow"

lint: install-test  ## ruff lint and format check
	$(BIN)/ruff check fleetops fleetops_cli components pipelines tests benchmarks
	$(BIN)/ruff format --check fleetops fleetops_cli components pipelines tests benchmarks

format: install-test  ## apply ruff formatting and fixes
	$(BIN)/ruff check --fix fleetops fleetops_cli components pipelines tests benchmarks
	$(BIN)/ruff format fleetops fleetops_cli components pipelines tests benchmarks

compile: install  ## compile every pipeline to $(BUILD) with IMAGE as the components image
	$(BIN)/fleetops compile --output $(BUILD) --image $(IMAGE)

golden: install  ## refresh the golden compiled specs in tests/golden after a deliberate change
	$(BIN)/python -m tests.golden_specs --write

bench: install  ## run every benchmark in benchmarks/ (installs the baselines' extras; wrk comes from apt)
	$(BIN)/pip install --quiet -e ".[bench]"
	@for b in benchmarks/bench_*.py; do [ -e "$$b" ] || continue; echo "== $$b"; $(BIN)/python "$$b" || exit 1; done

clean:  ## remove build outputs and the local twin home
	rm -rf build .fleetops .pytest_cache
