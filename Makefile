# The two commands a newcomer needs: `make up` (run everything locally) and `make test`.
# Both install exactly what requirements.txt pins (hashes checked); `make lock` refreshes it.
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_PROFILE ?= local

.PHONY: up test lint bench browser lock

# The project itself goes in editable, without dependencies (all of them came from the lock) and
# without build isolation, so that its build backend is the locked setuptools too.
$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --require-hashes --no-deps -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

up: $(VENV)/.installed
	$(VENV)/bin/tf up

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy config customers catalogue fleet audit gateway metering billing simulator bench console portal
	$(PY) manage.py makemigrations --check --dry-run

# The console's browser tests drive Debian's headless Chromium; bench.cluster's test drives hey.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v hey >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver hey; }

# Tests use this machine's PostgreSQL (a test_* database they create) and Redis db 15; then
# the tests marked redis_cluster run again on a Redis Cluster of their own (tests/conftest.py).
test: lint browser
	REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/15} $(PY) -m pytest
	TF_TEST_REDIS_CLUSTER=1 $(PY) -m pytest -m redis_cluster

bench: $(VENV)/.installed
	$(PY) -m bench.overhead

# Re-resolve every dependency (all extras, dev tools included) to the newest releases that
# pyproject.toml's ranges allow, with their hashes; then run `make test` before committing it.
# `make lock UPGRADE=` only adds what pyproject.toml gained, keeping every other pin.
UPGRADE ?= --upgrade
lock: $(VENV)/.installed
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet $(UPGRADE) \
	  --all-extras --generate-hashes --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links --output-file requirements.txt pyproject.toml
