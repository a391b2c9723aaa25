# The two everyday commands: `make run` (dashboard) and `make test` (lint + the whole suite). Each sets itself up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
# Address, allowed hosts, headless, no file watcher, no usage stats: .streamlit/config.toml (plain `streamlit run` too).
STREAMLIT_FLAGS := --server.port $(PORT)
# Remote code and pickle weights are the operator's choice, never the browser's: `make run TRUST_REMOTE_CODE=1
# ALLOW_PICKLE=1`, or ULENS_TRUST_REMOTE_CODE=1 / ULENS_ALLOW_PICKLE=1 in the environment (kept when not given here).
OPT_INS := ULENS_TRUST_REMOTE_CODE="$(or $(TRUST_REMOTE_CODE),$(ULENS_TRUST_REMOTE_CODE))" \
	ULENS_ALLOW_PICKLE="$(or $(ALLOW_PICKLE),$(ULENS_ALLOW_PICKLE))"

.PHONY: run test test-unit test-integration test-e2e lint format setup setup-dev chromium model bench clean

# The demo experiment builds in a detached process (nothing happens when it is built); the sidebar shows its progress.
# dashboard/serve.py is `python -m streamlit` with the pages' heavy imports done before the server listens.
run: setup model
	$(BIN)/python -m core demo --background
	$(OPT_INS) $(BIN)/python -m dashboard.serve run dashboard/app.py $(STREAMLIT_FLAGS)

test: setup-dev chromium model
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# The tiers one at a time (a tier is a folder). Unit: tiny models built in the tests, no real SmolLM2, no Chromium.
test-unit: setup-dev
	$(BIN)/python -m pytest tests/unit

test-integration: setup-dev model
	$(BIN)/python -m pytest tests/integration

test-e2e: setup-dev chromium model
	$(BIN)/python -m pytest tests/e2e

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

setup: $(VENV)/.deps
setup-dev: $(VENV)/.deps-dev

$(VENV)/.deps: requirements.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	touch $@

# The test dependencies and the optional Ray group (sweeps on a cluster: requirements-ray.txt, docs/SCALING.md).
$(VENV)/.deps-dev: $(VENV)/.deps requirements-dev.txt requirements-ray.txt
	$(PIP) -r requirements-dev.txt -r requirements-ray.txt
	touch $@

# Debian's Chromium for the browser tests and image export (never a browser download).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# The embedded SmolLM2 model, converted once into the cache home.
model: setup
	$(BIN)/python -m core model

bench: setup-dev model
	$(BIN)/python bench/probe.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output
