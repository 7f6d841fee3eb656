# bg_ops: the two commands (README) and a few helpers.
#   make dev   set up .venv, migrate, seed the demo, run the UI + daemon on 127.0.0.1:3000
#   make test  the whole test suite (real PostgreSQL, SMTP and Dropbox test servers)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 3000
TENANTS ?= 3

.PHONY: dev install test test-fast bench bench-quick validate clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bg_ops needs Python 3.11 or newer: make dev PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

# DAGSTER_HOME is unset on purpose: `dagster dev` then reads ./dagster.yaml and keeps its
# state in ./.tmp_dagster_home_* (ENVIRONMENT.md).
dev: install
	$(BIN)/bg-ops db upgrade
	$(BIN)/bg-ops demo seed --tenants $(TENANTS)
	env -u DAGSTER_HOME $(BIN)/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

validate: install
	env -u DAGSTER_HOME $(BIN)/dagster definitions validate -w workspace.yaml

clean:
	rm -rf .bg_ops .tmp_dagster_home_* .pytest_cache
