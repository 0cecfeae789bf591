# The front door. `make loadtest` runs the main job; `make test` runs every test.
# Both create .venv and install what they need on first use; no database or
# Docker is required (an embedded PostgreSQL is started when DATABASE_URL is unset).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: help install test loadtest lint check clean gate gate-baseline

help:
	@echo "make loadtest   run the load test (100 users, ~1 min) and print the p95 verdict"
	@echo "make test       run all tests against a real PostgreSQL (embedded if none given)"
	@echo "make lint       ruff and mypy --strict"
	@echo "make check      lint + test"
	@echo "make gate       latency gate: ~90 s paced load, ChatStore p95 / raw asyncpg p95 vs the baseline"

$(STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --group dev -e .
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

loadtest: $(STAMP)
	$(BIN)/python -m loadtests run $(ARGS)

gate: $(STAMP)
	$(BIN)/python -m loadtests.gate check $(ARGS)

gate-baseline: $(STAMP)
	$(BIN)/python -m loadtests.gate update-baseline $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: lint test

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache
