# The two commands of the README's quick start, what they need, and the programs a few tests drive.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test deps lint bench clean

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

# The programs some tests drive, from Debian (as root): PostgreSQL's server (without Debian's default
# cluster: the test makes its own), Chromium (renders the report), binutils (rebuilds host/measure.s),
# a C compiler (the fork probe and the translation chase are compiled at run time).
# Without them those tests are skipped, saying what is missing; with CI set they fail instead.
deps:
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
	    mkdir -p /etc/postgresql-common/createcluster.d && \
	    echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/ptshare-no-main-cluster.conf; \
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql chromium binutils gcc libc6-dev

lint: $(BIN)/ptshare
	$(BIN)/pip install -q ruff
	$(BIN)/ruff check src tests

bench: $(BIN)/ptshare
	$(BIN)/ptshare bench

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
