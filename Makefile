# Two commands do all set-up on a fresh clone:  `make pipeline`  and  `make test`.
# Both create the virtual environment first if it is missing (or pyproject.toml changed).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Stage commands in dvc.yaml say `python -m tasks.<stage>`: make them find the venv's python.
RUN    := PATH="$(CURDIR)/$(BIN):$$PATH"

.PHONY: help setup pipeline test test-fast bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --progress-bar off --upgrade pip
	$(BIN)/pip install --progress-bar off -e '.[dev]'
	touch $@

setup: $(STAMP)  ## create .venv with everything the project needs

pipeline: $(STAMP)  ## run the whole DAG on the default data (dvc repro)
	$(RUN) $(BIN)/dvc repro

test: $(STAMP)  ## the full test suite (unit, data, model, real DVC pipeline)
	$(RUN) $(BIN)/pytest

test-fast: $(STAMP)  ## the suite without the slow pipeline tests
	$(RUN) $(BIN)/pytest -m "not slow"

bench: $(STAMP)  ## accuracy over seeds vs the baseline; Lightning vs a plain PyTorch loop
	$(RUN) $(BIN)/python benchmarks/accuracy_seeds.py
	$(RUN) $(BIN)/python benchmarks/lightning_overhead.py

clean:  ## remove pipeline outputs (not the venv, not the DVC cache)
	rm -rf data artifacts metrics plots
