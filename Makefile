# fiboserver: every command a user or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Re-installs when the project metadata changes.
INSTALLED := $(VENV)/.installed
DEV_CONFIG := k8s/overlays/dev/config.yaml

.PHONY: help install run test lint

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(INSTALLED) ## create .venv with the service and its dev tools

run: $(INSTALLED) ## serve the DEV configuration on :8080 in the foreground (Ctrl-C stops it)
	FIBOSERVER_CONFIG=$(DEV_CONFIG) exec $(BIN)/gunicorn -c gunicorn.conf.py

test: $(INSTALLED) ## run every test (CI=true: a missing tool fails instead of skipping)
	$(BIN)/pytest

lint: $(INSTALLED) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
