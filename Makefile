# The two commands of the README: `make demo` and `make test`.
# Each bootstraps .venv when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-faults chaos bench venv clean down sysdeps

# Debian packages the tests need (CMD:PACKAGE): Prometheus and promtool for the metrics tests, Chromium
# for the console's browser tests (Playwright drives it; it never downloads a browser).
SYSDEPS := prometheus:prometheus promtool:prometheus chromium:chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m rollbackctl.demo

sysdeps:
	@tools/sysdeps $(SYSDEPS)

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q

# The fault tests alone (tests/faults/: crashes, outages, bad input; ~3 min). `make test` runs them too.
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q tests/faults

# The seeded fault campaign (tests/support/chaos.py): SEED=N replays one; a random one otherwise (printed).
SEED ?= random
STEPS ?= 40
chaos: $(STAMP)
	CHAOS_SEED=$(SEED) CHAOS_STEPS=$(STEPS) CHAOS_MAX_DOWN_S=10 CHAOS_TIMEOUT_S=900 \
		$(BIN)/python -m pytest -q -s -p no:cacheprovider tests/faults/test_chaos.py

bench: $(STAMP)
	$(BIN)/python -m bench

down: $(STAMP)
	$(BIN)/rollbackctl dev down

clean:
	rm -rf $(VENV) .dev .pytest_cache
