# FedSilo: `make demo` runs a local federation, `make test` runs the test suite,
# `make bench PROFILE=quick|full` the benchmarks (results in bench/results/PROFILE/), `make bench-smoke` CI's short check of them.
# Each sets up .venv on first use (CPU torch first, so pip never pulls a CUDA build).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
PROFILE ?= quick

.PHONY: setup browser demo test test-fast test-faults test-load bench bench-smoke bench-dp clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" bash deploy/demo.sh

# Debian's Chromium for the tests that open report.html in a real browser (they skip, saying so,
# where it cannot be installed: not root, or no apt-get).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } ; } || \
	  echo "make: no Chromium (not root, or apt-get failed): the browser tests will skip"

test: setup browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup browser
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-faults: setup
	$(BIN)/python -m pytest --faults -m faults $(PYTEST_ARGS)

test-load: setup
	$(BIN)/python -m pytest --load -s tests/test_load.py $(PYTEST_ARGS)

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

bench: setup $(VENV)/.bench-installed
	$(BIN)/python bench/run.py --profile $(PROFILE)

# CI's smoke test of the benchmark harness: three short benchmarks of the quick profile and the
# summary, into a scratch folder (the committed results stay as they are). About 3 minutes.
bench-smoke: setup
	out=$$(mktemp -d) && $(BIN)/python bench/run.py --profile quick --only head_features,private_head,traffic --out $$out && \
	  test -s $$out/SUMMARY.md && echo "bench-smoke: ok ($$out)"

bench-dp: setup
	$(BIN)/python bench/dp_speed.py

clean:
	rm -rf runs demo-data .pytest_cache
