# The two commands a newcomer needs: `make up` (run everything locally) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_PROFILE ?= local

.PHONY: up test lint bench browser

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
	$(VENV)/bin/mypy config gateway metering billing simulator bench console
	$(PY) manage.py makemigrations --check --dry-run

# The console's browser tests drive Debian's headless Chromium.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; }

# Tests use this machine's PostgreSQL (a test_* database they create) and Redis db 15.
test: lint browser
	REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/15} $(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m bench.overhead
