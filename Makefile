# The two commands of the README: `make demo` and `make test`.
# Each bootstraps .venv when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-faults chaos bench venv clean down sysdeps

# Debian packages the tests need (CMD:PACKAGE): Prometheus and promtool for the metrics tests, Chromium
# for the console's browser tests (Playwright drives it; it never downloads a browser), Node and npm for
# the OpenFeature Node client's test.
SYSDEPS := prometheus:prometheus promtool:prometheus chromium:chromium node:nodejs npm:npm

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

# The official OpenFeature Node SDK and OFREP provider (tests/test_ofrep.py), from npm's registry at bootstrap
NODE_OFREP := tests/node_ofrep/node_modules/.installed
$(NODE_OFREP): tests/node_ofrep/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm is missing -- install it: sudo apt-get install nodejs npm" >&2; exit 0; }
	cd tests/node_ofrep && npm ci --no-audit --no-fund --silent && touch node_modules/.installed

test: $(STAMP) sysdeps $(NODE_OFREP)
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
