# churn-detector — `make demo` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit rules integration audit faults bench clean venv help

help:
	@echo "make demo   - set up and run the embedded demo (simulator -> engine, no Kafka)"
	@echo "make test   - set up and run lint, type checks, unit and integration tests"
	@echo "make bench  - run the benchmarks and append results to benchmarks/RESULTS.md"
	@echo "make audit  - check the installed dependencies for known vulnerabilities (pip-audit)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools
	$(BIN)/pip install --quiet -e '.[dev,parquet]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/churn-detector demo

lint: $(STAMP)
	$(BIN)/ruff check detector tests benchmarks
	$(BIN)/ruff format --check detector tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit detector

# Prometheus alert and recording rules: syntax, then their unit tests (promtool from Debian's
# prometheus package, installed by the script when missing).
rules:
	deploy/prometheus-local.sh install
	promtool check rules deploy/prometheus/rules/*.yml
	promtool test rules deploy/prometheus/tests/*.yml

integration: $(STAMP)
	deploy/run-integration.sh

# Known vulnerabilities in the installed dependencies (pip-audit; see the script for the
# fallback used when the registry serves no per-version JSON). AUDIT_STRICT=1: unaudited fails.
audit: $(STAMP)
	$(BIN)/python deploy/audit_dependencies.py

test: lint typecheck audit unit rules integration

# Fault tests that do not pass yet (see tests/faults): not part of `make test`.
faults: $(STAMP)
	BOOTSTRAP=$$(deploy/kafka-local.sh start) && trap 'deploy/kafka-local.sh stop' EXIT && \
	CHURN_TEST_KAFKA_BOOTSTRAP=$$BOOTSTRAP $(BIN)/pytest -q tests/faults

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-out
