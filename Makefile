# The targets people look for. `make up` and `make test` each set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test files run on this many workers, each with its own broker and database: most of a test's
# time is waiting on a service, so two workers take about two thirds of one on two cores.
TEST_WORKERS ?= 2

.PHONY: up down status test lint setup system clean

up: setup ## set up everything and start the whole system
	$(BIN)/fraudstream up

down: ## stop the system (keep data)
	$(BIN)/fraudstream down

status:
	$(BIN)/fraudstream status

test: setup ## set up everything and run the whole test suite (starts its own Kafka and PostgreSQL)
	@./scripts/ensure-system-packages --for-tests
	$(BIN)/ruff check src tests bench
	$(BIN)/pytest --numprocesses $(TEST_WORKERS) --dist loadfile

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

setup: system $(STAMP) ## virtual environment, pip packages, Kafka jars (cached after the first run)
	$(BIN)/fraudstream setup

system: ## Java 17+ and Maven from Debian's packages when missing (needs root)
	@./scripts/ensure-system-packages

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "fraudstream needs Python >= 3.10")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,spark]'
	touch $(STAMP)

clean: ## stop everything, delete the data and the virtual environment
	-test -x $(BIN)/fraudstream && $(BIN)/fraudstream down --volumes
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
