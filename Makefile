# Developer tasks for yadtq. CI runs `make test` through .ci/run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint

venv: $(VENV)/.installed

# Reinstalled only when pyproject.toml (the dependency list) changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[local,test]'
	touch $@

demo: venv
	$(BIN)/python scripts/demo.py

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .
