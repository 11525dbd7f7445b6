# Two commands do all set-up on a fresh clone:  `make pipeline`  and  `make test`.
# Both create the virtual environment first if it is missing (or pyproject.toml or the lock changed),
# from requirements.lock: the exact files, by sha256, that the suite passed with. `make lock` re-resolves.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
PIP    := $(BIN)/pip --disable-pip-version-check
# Stage commands in dvc.yaml say `python -m tasks.<stage>`: make them find the venv's python.
RUN    := PATH="$(CURDIR)/$(BIN):$$PATH"

.PHONY: help setup lock docs pipeline serve test test-fast lint format bench clean prefect-server prefect-deploy prefect-worker prefect-run

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --progress-bar off --require-hashes --no-deps -r $(LOCK)
	$(PIP) install --quiet --progress-bar off --no-deps --no-build-isolation -e .
	@$(PIP) check || { echo "requirements.lock does not satisfy pyproject.toml: run 'make lock'"; exit 1; }
	touch $@

setup: $(STAMP)  ## create .venv with exactly the locked versions (requirements.lock)

LOCKVENV := .venv-lock

lock:  ## re-resolve every dependency afresh, run the whole suite on it, and only if it passes rewrite the lock
	rm -rf $(LOCKVENV)
	$(PYTHON) -m venv $(LOCKVENV)
	$(LOCKVENV)/bin/pip install --progress-bar off --report $(LOCKVENV)/report.json -e '.[dev]' pip
	touch $(LOCKVENV)/.installed
	$(MAKE) test VENV=$(LOCKVENV)
	$(LOCKVENV)/bin/python .ci/lock.py $(LOCKVENV)/report.json > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	@echo "$(LOCK) rewritten from a passing suite; 'git diff $(LOCK)' shows what moved. Rebuild .venv with 'make setup'."

pipeline: $(STAMP)  ## run the whole DAG on the default data (`lab2prod run` = dvc repro)
	$(RUN) $(BIN)/lab2prod run

serve: $(STAMP)  ## serve the registry's champion on http://127.0.0.1:8000 (`lab2prod serve`)
	$(RUN) $(BIN)/lab2prod serve

# Two processes, a test module to each at a time (module fixtures such as a Prefect server stay whole), the
# modules and the tests in each in a shuffled order: every test must pass in any order (the seed is printed).
test: lint docs  ## lint, the docs build, then the full suite (two processes, shuffled order)
	$(RUN) $(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder --random-order-bucket=module

docs: $(STAMP)  ## build docs/ into site/ with MkDocs (strict: a broken link or anchor fails the build)
	$(BIN)/mkdocs build --strict --quiet

test-fast: $(STAMP)  ## the suite without the slow pipeline tests
	$(RUN) $(BIN)/pytest -m "not slow"

LINTED := lab2prod tasks models flows tests benchmarks

lint: $(STAMP)  ## ruff check (E, W, F, I, B, UP, SIM; 120 columns) and ruff format --check
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

format: $(STAMP)  ## ruff format and the safe ruff fixes, in place
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

bench: $(STAMP)  ## accuracy over seeds vs the baseline; Lightning vs a plain loop; Prefect vs dvc repro
	$(RUN) $(BIN)/python -m benchmarks.accuracy_seeds --seeds 3
	$(RUN) $(BIN)/python -m benchmarks.lightning_overhead --runs 5
	$(RUN) $(BIN)/python -m benchmarks.prefect_overhead --runs 3 --settings tiny

clean:  ## remove pipeline outputs (not the venv, not the DVC cache)
	rm -rf data artifacts metrics plots

# --- Prefect ---------------------------------------------------------------------------------
PREFECT_PORT ?= 4200
export PREFECT_API_URL ?= http://127.0.0.1:$(PREFECT_PORT)/api

prefect-server: $(STAMP)  ## start a local Prefect server (SQLite in ~/.prefect), UI on :4200
	$(BIN)/lab2prod prefect server --port $(PREFECT_PORT)

prefect-deploy: $(STAMP)  ## create the process work pool and register prefect.yaml's deployments
	$(RUN) $(BIN)/lab2prod prefect deploy

prefect-worker: $(STAMP)  ## register, then run flow runs from the pool on this machine
	$(RUN) $(BIN)/lab2prod prefect worker

prefect-run: $(STAMP)  ## trigger one on-demand run and follow it (needs a worker)
	$(BIN)/lab2prod prefect run training-pipeline
