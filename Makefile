# The two commands a newcomer needs: `make up` (run everything locally) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_PROFILE ?= local

.PHONY: up test lint bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

up: $(VENV)/.installed
	$(VENV)/bin/tf up

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy config gateway metering billing simulator bench
	$(PY) manage.py makemigrations --check --dry-run

# Tests use this machine's PostgreSQL (a test_* database they create) and Redis db 15.
test: lint
	REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/15} $(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m bench.overhead
