# Two commands on a fresh machine with only Python 3.11+:
#   make up    run the system (embedded PostgreSQL + Redis unless ORCH_* URLs are set)
#   make test  run the whole test suite
# Each creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test chaos chromium lint bench loadtest compose-test clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: Python 3.11+ is required (PYTHON=$(PYTHON))")'
	@# no venv, or one whose python does not run: made (again); one without pip (made by
	@# `venv` without python3-venv on Debian, or by `uv venv`) gets pip from ensurepip
	$(BIN)/python -c '' 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); } || true
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --upgrade >/dev/null 2>&1 || { echo "error: no pip in $(VENV) and ensurepip failed (on Debian/Ubuntu: apt-get install python3-venv, then rm -rf $(VENV))" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/orchestrator up

# Two pytest-xdist processes, a test file to each at a time: the suite mostly waits on real
# servers and processes (one core busy on average when run alone), so two halve its time.
TEST_PROCESSES ?= 2
test: $(STAMP) chromium
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile

# The chaos suite alone (also part of `make test`), its figures printed: restarts of PostgreSQL
# and Redis, killed workers and API replicas, two beats, the 2,000-job scale-out burst.
chaos: $(STAMP)
	$(BIN)/python -m pytest -m chaos -s tests/chaos

# The console's browser tests drive Debian's chromium (playwright never downloads a browser):
# installed here when missing and we are root, else one line says what to do.
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else \
	    echo "error: the console tests need Debian's chromium: sudo apt-get install chromium" >&2; \
	    exit 1; \
	  fi; }

lint: $(STAMP)
	$(BIN)/ruff check orchestrator workers tests bench loadtests
	$(BIN)/mypy orchestrator workers

bench: $(STAMP)
	$(BIN)/python bench/ledger.py

# make loadtest [SHAPE=ramp|spike|soak|failover] [USERS=500] [RUN_TIME=5m] [LOADTEST_ARGS=...]
SHAPE ?= ramp
USERS ?= 500
loadtest: $(STAMP)
	$(BIN)/python loadtests/run.py --shape $(SHAPE) --users $(USERS) \
		$(if $(RUN_TIME),--run-time $(RUN_TIME)) $(LOADTEST_ARGS)

# The compose stack for real (Docker and compose needed; no .venv): builds the image, runs
# compose.yaml, submits jobs through it, scales workers, stops it. See deploy/compose_test.py.
compose-test:
	$(PYTHON) deploy/compose_test.py

clean:
	rm -rf $(VENV) .orchestrator .pytest_cache .mypy_cache .hypothesis
