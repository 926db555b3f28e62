# `make run` sets up a virtualenv and starts the app on the simulated arm; `make test` sets up and runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# A Python >= 3.12 from PATH, else from pyenv (scripts/find-python).
PYTHON ?= $(shell scripts/find-python)

.PHONY: run test venv lint bench clean

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then echo "No Python >= 3.12 found on PATH or in pyenv. Install one (e.g. 'pyenv install 3.12') and retry."; exit 1; fi
	@echo "Creating $(VENV) with $(PYTHON)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/lepetpal --sim

test: $(STAMP)
	$(PY) -m ruff check lepetpal_tui tests bench
	$(PY) -m mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q --durations=15

lint: $(STAMP)
	$(PY) -m ruff check lepetpal_tui tests bench
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) bench/arm_cycle.py
	$(PY) bench/control_loop.py
	$(PY) bench/policy_latency.py
	$(PY) bench/full_size_run.py
	$(PY) bench/pacing_replay.py
	$(PY) bench/ui_figures.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
