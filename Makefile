# The two commands a newcomer needs: `make demo` and `make test`. Both create the virtual
# environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test processes for `make test`: most tests wait on brokers, workers and deadlines, so three
# share two cores well. One file runs in one process (its module fixtures are built once).
TEST_PROCESSES ?= 3

.PHONY: demo test unit lint typecheck schemas bench bench-report chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/referral-bridge demo --data-dir var/demo

test: $(STAMP)
	$(BIN)/ruff check referral_bridge tests benchmarks
	$(BIN)/ruff format --check referral_bridge tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadfile --durations=15

# The fast loop: the pure core and everything else that needs no broker or database.
unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check referral_bridge tests benchmarks
	$(BIN)/ruff format --check referral_bridge tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/referral-bridge schemas write schemas

# Throughput and memory as ratios to baselines measured in the same run (docs/benchmarks.md).
bench: $(STAMP)
	$(BIN)/python benchmarks/pipeline.py --events 2000 --amqp amqp://guest:guest@127.0.0.1:5672// --check

# The compliance report on a ledger of 100,000 victims (SQLite), against baselines in the same run;
# fails if the report takes 10 s or more. Add LEDGER_URL=postgresql+psycopg://... (an empty
# database) to run it on PostgreSQL.
bench-report: $(STAMP)
	$(BIN)/python benchmarks/report.py --victims 100000 --check $(if $(LEDGER_URL),--ledger-url $(LEDGER_URL))

# The long fault runs (docs/reliability.md): broker, ledger and process faults on thousands of
# events, a provider flapping for 10 minutes, withdrawals racing deliveries. Prints the table.
chaos: $(STAMP)
	RB_FAULT_SCALE=long $(BIN)/pytest -q -s tests/e2e/fault_runs tests/e2e/test_chaos.py \
		tests/e2e/test_flapping_provider.py tests/e2e/test_withdrawal_race.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
