# Targets that people and CI both call. Override the variables on the command line, e.g.
# `make venv PYTHON=python3.12` or `make bench BENCH=routing`.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV ?= .venv
BIN := $(VENV)/bin
# Extra pip arguments, e.g. PIP_ARGS="--no-cache-dir".
PIP_ARGS ?=
BENCH ?= all
# Packs the tests share, built before pytest starts (tests/conftest.py reads the same folder).
TEST_PACKS ?= $(CURDIR)/.cache/packs
# apt-get needs root; under CI (no stdin) sudo must fail at once instead of asking a password.
ifeq ($(shell id -u),0)
SUDO ?=
else
SUDO ?= sudo$(if $(CI), -n)
endif

.DEFAULT_GOAL := help
.PHONY: help venv mosquitto test-packs test demo lint format proto docs bench clean

help:  ## list the targets
	@awk -F ':.*## ' '/^[a-z-]+:.*## / { printf "  %-11s %s\n", $$1, $$2 }' $(firstword $(MAKEFILE_LIST))

venv: $(VENV)/.installed  ## create the virtualenv and install the project with all extras

# Reinstalls only when the dependencies change.
$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	@test -n "$(PYTHON)" || { echo "no python3.11 or python3 on PATH; set PYTHON=..." >&2; exit 1; }
	@if [ ! -x $(BIN)/python ]; then \
		$(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install -q --upgrade pip; \
	fi
	$(BIN)/python -m pip install $(PIP_ARGS) -c constraints-cpu.txt -e '.[cloud,edge,bench,dev]'
	@touch $@

mosquitto:  ## install the MQTT broker (Debian's mosquitto) unless it is already there
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then \
		echo "mosquitto: already installed"; \
	else \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends mosquitto mosquitto-clients; \
	fi

test-packs: venv  ## build the quick pack the tests share (reused when its recipe was built)
	$(BIN)/autoglm models build --quick --out $(TEST_PACKS)

test: venv mosquitto test-packs  ## run all tests, including the generated-code and docs freshness checks
	AUTOGLM_TEST_PACKS=$(TEST_PACKS) PATH="$$PATH:/usr/sbin" $(BIN)/python -m pytest -q

demo: venv mosquitto  ## the whole system on loopback: broker, cloud, two edges, a mixed workload
	PATH="$$PATH:/usr/sbin" $(BIN)/autoglm demo

lint: venv  ## ruff lint, ruff format check, mypy, import contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy scripts
	$(BIN)/lint-imports

format: venv  ## apply ruff's safe fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

proto: venv  ## regenerate shared/rpc/autoglm/ from proto/ (commit the result)
	$(BIN)/python scripts/gen_proto.py

docs: venv  ## regenerate the settings reference in docs/configuration.md
	$(BIN)/python scripts/gen_config_docs.py

bench: venv  ## run a benchmark: make bench BENCH=<name> (default: all)
	$(BIN)/autoglm bench $(BENCH)

clean:  ## remove caches and build outputs (keeps the virtualenv and packs/)
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
