# The README's two commands are `make demo` and `make test`; CI runs `make test` too.
# Every target bootstraps what it needs itself, so each works on a fresh clone.
# Extra arguments: make test ARGS="tests/test_audit.py -x"

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
ARGS ?=

.PHONY: help demo test bench lint dev clean bootstrap services

help: ## list the targets
	@echo "Targets:"
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z]+):.*## /  \1\t/' | expand -t 14

demo: bootstrap ## run the end-to-end demo (starts Docker if needed)
	@service_env="$$(bash scripts/services.sh --with-docker)"; eval "$$service_env"; \
	  $(VENV)/bin/fivesafes-tes demo $(ARGS)

test: ## run the test suite as CI does (venvs, services, pytest)
	bash scripts/test.sh $(ARGS)

bench: bootstrap ## run the benchmarks (one run) and write docs/benchmarks.md; ARGS=--quick for a smoke run
	@service_env="$$(bash scripts/services.sh --with-docker)"; eval "$$service_env"; \
	  $(VENV)/bin/python -m bench $(ARGS)

lint: bootstrap ## ruff check, ruff format --check and mypy (scripts/lint.sh)
	bash scripts/lint.sh

dev: bootstrap ## run the embedded federation and keep it up (starts Docker if needed)
	@service_env="$$(bash scripts/services.sh --with-docker)"; eval "$$service_env"; \
	  $(VENV)/bin/fivesafes-tes dev $(ARGS)

bootstrap: ## create/refresh .venv (no-op when pyproject.toml is unchanged)
	@bash scripts/bootstrap.sh

services: ## start PostgreSQL and print the export lines
	@bash scripts/services.sh

clean: ## remove venvs, caches and build output (not .fivesafes/ state)
	rm -rf $(VENV) .venv-pytes04 .pytest_cache .ruff_cache .hypothesis .schemathesis build dist *.egg-info
	find . -name __pycache__ -type d -not -path './.git/*' -prune -exec rm -rf {} +
