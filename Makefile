# Everything installs into .venv from pyproject.toml, pinned by constraints.txt.
# ENGINE_HOME holds all local state; DAGSTER_HOME lives inside it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export ENGINE_HOME ?= $(CURDIR)/.engine
export DAGSTER_HOME ?= $(ENGINE_HOME)/dagster

.PHONY: install run test dev bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/engine train

test: $(STAMP)
	$(BIN)/pytest

dev: $(STAMP)
	$(BIN)/engine init-instance
	$(BIN)/dagster dev -w workspace.yaml

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_daily.py

clean:
	rm -rf $(VENV) .engine
