# Every target: `make help`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_CONFIG := deploy/config/dev.toml
HOST ?= 127.0.0.1
PORT ?= 8080

.DEFAULT_GOAL := help

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

.PHONY: install  ## Create .venv and install the service with its dev tools
install: $(STAMP)

.PHONY: redis-server  ## Make sure redis-server exists (apt-get install when root)
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server is missing: sudo apt-get install redis-server" >&2; exit 1; fi; }

.PHONY: run  ## Serve the API on $(HOST):$(PORT) with the embedded store and the dev config
run: $(STAMP)
	@$(PY) -m service curl-example --config $(DEV_CONFIG) --host $(HOST) --port $(PORT)
	$(PY) -m service --host $(HOST) --port $(PORT) --config $(DEV_CONFIG)

.PHONY: format  ## Fix formatting and autofixable lint
format: $(STAMP)
	$(VENV)/bin/ruff format service tests
	$(VENV)/bin/ruff check --fix service tests

.PHONY: lint  ## ruff and mypy --strict
lint: $(STAMP)
	$(VENV)/bin/ruff check service tests
	$(VENV)/bin/ruff format --check service tests
	$(VENV)/bin/mypy

.PHONY: test  ## Lint, then every test against a real redis-server and the embedded store
test: $(STAMP) redis-server lint
	$(PY) -m pytest

.PHONY: test-slow  ## The long property-based runs too
test-slow: $(STAMP) redis-server
	$(PY) -m pytest -m slow

.PHONY: help  ## This list
help:
	@grep -E '^\.PHONY: [a-z-]+  ## ' $(MAKEFILE_LIST) | sed -E 's/^\.PHONY: ([a-z-]+)  ## /  make \1\t/' | expand -t 20
