# bg_ops: the two commands (README) and a few helpers.
#   make dev   set up .venv, migrate, seed the demo, run the UI + daemon on 127.0.0.1:3000
#   make test  the whole test suite (real PostgreSQL, SMTP and Dropbox test servers)
#   make bench the benchmarks at full size (a few minutes); make bench-quick: tiny sizes

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 3000
TENANTS ?= 3

.PHONY: dev install test test-fast bench bench-quick bench-scale validate clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bg_ops needs Python 3.11 or newer: make dev PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

# Dagster's own state (runs, schedules, backfills) lives in .bg_ops/dagster_home so it survives
# restarts and other shells can reach it (DAGSTER_HOME=$$PWD/.bg_ops/dagster_home dagster ...).
# Its dagster.yaml is a copy of ./dagster.yaml, the settings every environment shares.
DAGSTER_HOME_DIR ?= $(abspath .bg_ops/dagster_home)

dev: install
	$(BIN)/bg-ops db upgrade
	$(BIN)/bg-ops demo seed --tenants $(TENANTS)
	mkdir -p $(DAGSTER_HOME_DIR) && cp dagster.yaml $(DAGSTER_HOME_DIR)/dagster.yaml
	DAGSTER_HOME=$(DAGSTER_HOME_DIR) $(BIN)/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

# Benchmarks (PERFORMANCE.md): one table, results in bench/results/<name>.json.
bench: install
	$(BIN)/python -m bench.run --size full

bench-quick: install
	$(BIN)/python -m bench.run --size quick

# B8: B3 and B4 also at 10x the full size (minutes, several GB of disk for B4's files).
bench-scale: install
	BG_OPS_BENCH_SCALE=1 $(BIN)/python -m bench.run --size full --only b3,b4

validate: install
	env -u DAGSTER_HOME $(BIN)/dagster definitions validate -w workspace.yaml

clean:
	rm -rf .bg_ops .tmp_dagster_home_* .pytest_cache
