# The two commands of the README's quick start, and what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/ptshare: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The main job: every policy on every shipped scenario.
demo: $(BIN)/ptshare
	$(BIN)/ptshare demo

# The whole test suite (long property-based runs: make test PYTEST_ARGS=--long).
test: $(BIN)/ptshare
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(BIN)/ptshare
	$(BIN)/pip install -q ruff
	$(BIN)/ruff check src tests

bench: $(BIN)/ptshare
	$(BIN)/ptshare bench

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
