# The two commands of the README: `make demo` and `make test`.
# Each bootstraps .venv when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-faults bench venv clean down

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m rollbackctl.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The fault tests alone (tests/faults/: crashes, outages, bad input; ~3 min). `make test` runs them too.
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q tests/faults

bench: $(STAMP)
	$(BIN)/python -m bench

down: $(STAMP)
	$(BIN)/rollbackctl dev down

clean:
	rm -rf $(VENV) .dev .pytest_cache
