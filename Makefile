# Developer tasks for yadtq. CI runs `make test` through .ci/run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint docs

venv: $(VENV)/.installed

# Reinstalled only when pyproject.toml (the dependency list) changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[local,notebook,otel,test,docs,dashboard]'
	touch $@

demo: venv
	$(BIN)/python scripts/demo.py

# The tests in tests/ and the demo notebooks, whose stored outputs nbval compares
# after notebooks/sanitize.cfg replaces what differs from run to run.
test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests --nbval notebooks --nbval-sanitize-with notebooks/sanitize.cfg

lint: venv
	$(BIN)/ruff check .

# The documentation site (mkdocs.yml, docs/) into site/; any warning fails the build.
docs: venv
	$(BIN)/mkdocs build --strict --site-dir site
