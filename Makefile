# Every target bootstraps its own virtual environment (.venv) on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export CLIPPER_HOME ?= $(CURDIR)/.clipper-home

.PHONY: run test test-fast lint format clean help system-deps

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Programs the tests need that pip cannot install: redis-server (the Redis
# config store's tests start their own). Installed from Debian's packages;
# apt-get update only runs when the install fails, as it is slow and usually
# unneeded.
system-deps:  ## install redis-server if it is missing (apt-get; sudo unless root)
	@if command -v redis-server >/dev/null 2>&1; then \
		echo "redis-server found: $$(command -v redis-server)"; \
	else \
		SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
		echo "redis-server not found; running: $$SUDO apt-get install -y redis-server"; \
		$$SUDO apt-get install -y redis-server || { \
			echo "install failed; running: $$SUDO apt-get update, then installing again"; \
			$$SUDO apt-get update && $$SUDO apt-get install -y redis-server; \
		}; \
	fi

run: $(STAMP)  ## start Clipper with the demo app 'digits' in the foreground
	$(BIN)/clipper start --demo

test: $(STAMP) system-deps  ## the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) system-deps  ## unit tests only, for the edit loop
	$(BIN)/python -m pytest -q -m 'not slow'

lint: $(STAMP)  ## ruff and mypy
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean:  ## remove the virtual environment and local state
	rm -rf $(VENV) .clipper-home .pytest_cache .mypy_cache .ruff_cache
