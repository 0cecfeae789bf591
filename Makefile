# The front door. `make loadtest` runs the main job; `make test` runs every test.
# Both create .venv and install what they need on first use; no database or
# Docker is required (an embedded PostgreSQL is started when DATABASE_URL is unset).
# `make test` also installs the Debian tools some tests run (tools/install-test-tools:
# apt-get as root or with passwordless sudo, else one line naming them).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HASH   := $(shell cksum pyproject.toml | cut -d' ' -f1)
# Two installs into one venv: `make loadtest` needs only the harness (the loadtest
# dependency group and the project), `make test` and `make lint` the dev group,
# which includes it. Each has its own stamp, named by pyproject.toml's checksum.
STAMP          := $(VENV)/.installed-dev-$(HASH)
LOADTEST_STAMP := $(VENV)/.installed-loadtest-$(HASH)

.PHONY: help install test test-unit test-fast loadtest capacity lint format check clean gate gate-baseline

help:
	@echo "make loadtest   run the load test (100 users, ~1 min) and print the p95 verdict"
	@echo "make capacity   raise the load step by step until a p95 target gives (a few minutes)"
	@echo "make test       run all tests against a real PostgreSQL (embedded if none given)"
	@echo "make test-unit  the unit tests only: no server, a few seconds"
	@echo "make test-fast  every test but the load and benchmark runs (marked slow); CI runs all"
	@echo "make format     ruff's fixes and formatter"
	@echo "make lint       ruff and mypy --strict"
	@echo "make check      lint + test"
	@echo "make gate       latency gate: ~90 s paced load, ChatStore p95 / raw asyncpg p95 vs the baseline"

# pip >= 25.1 reads [dependency-groups] (--group).
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25.1'

$(STAMP): $(BIN)/python
	$(BIN)/python -m pip install --quiet --group dev -e .
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP) $(LOADTEST_STAMP)

$(LOADTEST_STAMP): $(BIN)/python
	$(BIN)/python -m pip install --quiet --group loadtest -e .
	@rm -f $(VENV)/.installed-loadtest-*
	@touch $(LOADTEST_STAMP)

install: $(STAMP)

test: $(STAMP)
	tools/install-test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-fast: $(STAMP)
	tools/install-test-tools
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

loadtest: $(LOADTEST_STAMP)
	$(BIN)/python -m loadtests run $(ARGS)

capacity: $(LOADTEST_STAMP)
	$(BIN)/python -m loadtests capacity $(ARGS)

gate: $(LOADTEST_STAMP)
	$(BIN)/python -m loadtests gate check $(ARGS)

gate-baseline: $(LOADTEST_STAMP)
	$(BIN)/python -m loadtests gate update-baseline $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

check: lint test

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache
