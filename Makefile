# Two entry points: `make demo` (the whole study on the embedded synthetic default) and `make test`.
# Each creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck bench rehearse rehearse-folds dist clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "cxr needs Python >= 3.10, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

# make test (and rehearse, bench): everything the tests use; make demo: what the demo runs, and what serves
# its model afterwards (cxr serve, cxr listen)
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[cpu,train,serve,dev]"
	touch $(STAMP)

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[cpu,train,serve,dicom]"
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/cxr demo

lint: $(STAMP)
	$(BIN)/ruff check cxr tests benchmarks scripts docker examples
	$(BIN)/ruff format --check cxr tests benchmarks scripts docker examples

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	@# pytest exit 5 means "no tests collected": treat it as a failure, never as success.
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# The paper path on the real sample in ../shared (CPU, ~30 min): runs/rehearse/, see benchmarks/README.md
rehearse: $(STAMP)
	BIN=$(BIN) scripts/rehearse.sh

# The rehearsal on 5 cross-validation folds, test splits pooled (~65 min on 2 cores): runs/rehearse-folds/pooled/report.md
rehearse-folds: $(STAMP)
	BIN=$(BIN) scripts/rehearse_folds.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/run_cpu.py

# A wheel of cxr in dist/ (pip install 'dist/cxr_toolkit-0.1.0-py3-none-any.whl[cpu,serve]' on another machine)
dist: | $(BIN)/python
	$(BIN)/python -m pip wheel -q --no-deps -w dist .

clean:
	rm -rf $(VENV) runs dist .pytest_cache .mypy_cache .ruff_cache
