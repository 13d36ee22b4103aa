# The two commands of the README: `make run` (the main job on embedded defaults) and `make test`.
# Each creates its own virtual environment in .venv with the machine's python3 (override: make PYTHON=python3.12).
# The venv installs the hash-pinned lock for that Python (requirements/lock-pyXY-test.txt: the image's pins plus the
# test tools; docs/container.md says how to refresh them); a Python without a lock gets an unpinned install, with a
# warning. `make test-image` builds and runs the container image (root; scripts/image-test.sh), `make lock` refreshes
# the locks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTAG := $(shell $(PYTHON) -c 'import sys; print("%d%d" % sys.version_info[:2])' 2>/dev/null)
LOCK := requirements/lock-py$(PYTAG)-test.txt

.PHONY: run test test-fast test-slow test-image lock lint system-deps bench clean

$(STAMP): pyproject.toml $(wildcard $(LOCK)) requirements/build.txt
	$(PYTHON) -m venv $(VENV)
	@if [ -f $(LOCK) ]; then \
	  set -x; \
	  $(BIN)/pip install --quiet --require-hashes -r requirements/build.txt && \
	  $(BIN)/pip install --quiet --require-hashes --no-build-isolation -r $(LOCK) && \
	  $(BIN)/pip install --quiet --no-deps --no-build-isolation -e . ; \
	else \
	  echo "make: no $(LOCK) for this Python: installing unpinned (supported: $$(ls requirements/lock-py*-test.txt))" >&2; \
	  set -x; \
	  $(BIN)/pip install --quiet --upgrade pip && $(BIN)/pip install --quiet -e '.[test,fast]' ; \
	fi
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/enforcer serve

system-deps:
	bash scripts/system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check enforcer tests bench
	$(BIN)/ruff format --check enforcer tests bench
	$(BIN)/mypy

test: system-deps $(STAMP) lint
	$(BIN)/pytest

# The inner loop: every test but the end-to-end ones (marker e2e: they start real resolver, mitmdump, analyst or
# third-party server processes) and the slow ones; no lint, no system-deps (tests needing a missing tool skip).
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow and not e2e"

# The long versions the default run leaves out (marker slow: the full fuzz and property runs, the 1M-event analyst
# bench, ...: `.venv/bin/pytest -m slow --collect-only -q` lists them); make test then make test-slow run every test.
test-slow: system-deps $(STAMP)
	$(BIN)/pytest -m slow

test-image: $(STAMP)
	bash scripts/image-test.sh

lock:
	bash scripts/lock.sh

bench: $(STAMP)
	bash bench/run_all.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
