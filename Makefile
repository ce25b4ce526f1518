# Setup is automatic: every target below creates .venv and installs the project on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: demo test lint typecheck unit unit-pgbouncer test-fast bench docs serve simulator clean

# Tools whose own pins clash with the project's, each in a venv of its own (tests find them).
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.stamp
CHECKOV_VERSION := 3.3.30

$(TOOLS_STAMP): Makefile
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $(TOOLS_STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gateway demo $(ARGS)

test: lint typecheck unit unit-pgbouncer

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(TOOLS_STAMP)
	$(BIN)/pytest --durations=30 $(ARGS)

# The money, replica and fault suites (and the webhooks' end-to-end test) once more, every
# gateway they start talking to Postgres through a real PgBouncer in transaction pooling mode
# (tests/support/pgbouncer.py): what depends on how statements reach the server. The replicas
# in one topology (two), and not the rolling restart or the month boundary (process lifecycle
# and clocks, not statements), so that CI stays near 20 minutes; PGBOUNCER_SUITE and
# PGBOUNCER_SELECT override.
PGBOUNCER_SUITE ?= tests/test_money.py tests/test_replicas.py tests/test_hot_path.py \
	tests/test_fast_path.py tests/test_proxy.py tests/test_budget_levels.py \
	tests/faults/test_database.py tests/faults/test_races.py tests/faults/test_gateway_kills.py \
	tests/test_webhooks.py::test_every_settlement_sends_one_verified_event_across_replicas_after_an_outage
PGBOUNCER_SELECT ?= not three and not four
unit-pgbouncer: $(STAMP)
	GATEWAY_TEST_THROUGH_PGBOUNCER=1 $(BIN)/pytest --durations=15 $(PGBOUNCER_SUITE) -k "$(PGBOUNCER_SELECT)"

# The fast tier alone: service-level tests, each inside a transaction rolled back after it.
test-fast: $(STAMP)
	$(BIN)/pytest -m fast $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/routes.py $(ARGS)

# README "Configuration": the GATEWAY_* table, rewritten from gateway/config.py's Settings.
docs: $(STAMP)
	$(BIN)/python -m gateway.settings_reference --write README.md

serve: $(STAMP)
	$(BIN)/gateway serve --migrate $(ARGS)

simulator: $(STAMP)
	$(BIN)/gateway simulator $(ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache .hypothesis
