# vmigrate — the two commands that matter: `make demo` and `make test` (as root, Debian 12).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PYTEST_ARGS ?=
HOPS ?= 50
SOAK_TESTBED ?= vmsoak
SOAK_ARGS ?=

.PHONY: help setup host venv image demo test unit integration lint schema bench soak clean down

help:
	@echo "make demo   set everything up, run the default experiment end to end"
	@echo "make test   set everything up, lint, run unit + integration tests"
	@echo "make setup  system packages, .venv, guest image (idempotent)"
	@echo "make lint   ruff + mypy (strict on src/)"
	@echo "make schema docs/result.schema.json and docs/drain.schema.json from their models"
	@echo "make bench  benchmarks (figures, not pass/fail)"
	@echo "make soak   one web guest migrated back and forth HOPS=$(HOPS) times (testbed $(SOAK_TESTBED))"
	@echo "make down   remove the default testbed (also after a killed run)"

setup: host venv image

host:
	@bash scripts/setup-host.sh

$(UV):
	python3 -m venv .tools && .tools/bin/pip install --quiet uv

venv: | $(UV)
	@$(UV) sync --frozen --quiet || { pkg-config --exists libvirt || echo "venv: libvirt-python \
	builds against libvirt-dev, which is missing: run \`sudo make host\` first"; exit 1; }
	@echo "setup: .venv ok ($(BIN)/vmigrate)"

image: host venv
	@$(BIN)/vmigrate image build

demo: setup
	$(BIN)/vmigrate demo

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

schema: venv
	$(BIN)/python -m vmigrate.result.schema
	$(BIN)/python -m vmigrate.drain.schema

unit: venv
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

integration: setup
	$(BIN)/pytest tests/integration -q $(PYTEST_ARGS)

test: setup lint
	$(BIN)/pytest tests -q --durations=15 $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m bench

soak: setup
	$(BIN)/vmigrate soak examples/web.toml --hops $(HOPS) --testbed $(SOAK_TESTBED) $(SOAK_ARGS)

down: venv
	$(BIN)/vmigrate testbed down

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache runs .tools
