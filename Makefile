# Two commands do everything on a fresh machine:
#   make run    sets up .venv if missing and runs the default experiment (synthetic data,
#               MLflow in ./mlflow.db)
#   make test   sets up .venv if missing and runs the test suite (what .ci/run calls)
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup run test test-fast ui clean

# PostgreSQL server binaries for the shared-storage sweep test (tests/test_sweeper_postgres.py):
# installed with apt as root when no initdb is found; otherwise those tests skip (they fail under CI).
ENSURE_POSTGRES = if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing PostgreSQL (apt) for the shared-storage sweep test"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >/dev/null \
	      || echo "note: could not install PostgreSQL; the PostgreSQL sweep tests will skip"; \
	  else \
	    echo "note: no PostgreSQL server binaries (initdb) and not root: the PostgreSQL sweep tests will skip"; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@$(ENSURE_POSTGRES)
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

run: setup
	$(PY) -m ranking_exp $(ARGS)

# The suite spends most of its time in one-threaded work (starting Python and TensorFlow in a
# subprocess, building graphs, LightGBM with one thread), so it runs on PYTEST_WORKERS processes
# (pytest-xdist; one per core, at most 4), a test file per process: its module fixtures train once.
PYTEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
XDIST := -n $(PYTEST_WORKERS) --dist loadfile --durations=15

test: setup
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db

clean:
	rm -rf outputs multirun
