# Every target installs what it needs (project-locally) before running; stamps make re-runs free.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet
PG_BIN ?= /usr/lib/postgresql/15/bin

# Project-local Node 22 and CDK CLI first on PATH (jsii and the CLI both spawn `node`).
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)
export CDK_DISABLE_CLI_TELEMETRY := true
export CDK_DISABLE_VERSION_CHECK := true
CDK := $(CURDIR)/node_modules/.bin/cdk --no-notices --no-version-reporting

.PHONY: help synth test lint unit infra integration reliability bench soak deploy diff lock-lambda clean

help:
	@echo "make synth   cdk synth of every stack with all compliance packs enforced"
	@echo "make test    lint, type checks and every test layer (unit, infra, integration, reliability)"
	@echo "make lint    ruff + mypy"
	@echo "make bench   benchmarks (not part of the tests)"
	@echo "make soak    the randomized claim schedules at length (10,000)"
	@echo "make deploy  cdk deploy --all (set AWS_PROFILE)"

$(VENV)/.synth-installed: requirements-cdk.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements-cdk.txt -c constraints.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.synth-installed requirements-dev.txt requirements-lambda.txt constraints.txt
	$(PIP) install -r requirements-dev.txt -c constraints.txt
	touch $@

# checkov (tests/infra/test_checkov.py scans the synthesized templates) in its own virtualenv:
# its dependency tree conflicts with constraints.txt. Exactly the pinned set, then checked whole.
CHECKOV_VENV := .venv-checkov
$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip --disable-pip-version-check --quiet install --no-deps -r requirements-checkov.txt
	$(CHECKOV_VENV)/bin/python -m pip --disable-pip-version-check check
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --no-update-notifier --loglevel=error
	touch $@

# PostgreSQL 15 server binaries for the integration tests' throwaway cluster.
$(PG_BIN)/initdb:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null; \
	else \
		echo "PostgreSQL 15 server binaries are missing: install them (Debian: sudo apt-get install postgresql-15) or set PG_BIN"; exit 1; \
	fi

synth: $(VENV)/.synth-installed node_modules/.installed
	$(CDK) synth --quiet
	$(PY) -m infra.synth_summary cdk.out

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy handlers infra

# Under make, a missing checkov fails the scan instead of skipping it.
test infra: $(CHECKOV_VENV)/.installed
test infra: export CHECKOV_BIN := $(CURDIR)/$(CHECKOV_VENV)/bin/checkov

test: $(VENV)/.dev-installed node_modules/.installed $(PG_BIN)/initdb lint
	PG_BIN=$(PG_BIN) $(PY) -m pytest tests

unit infra integration reliability: $(VENV)/.dev-installed node_modules/.installed $(PG_BIN)/initdb
	PG_BIN=$(PG_BIN) $(PY) -m pytest tests/$@

bench: $(VENV)/.dev-installed $(PG_BIN)/initdb
	$(PY) -m benchmarks

# The randomized fault schedules at length: `make test` runs 300 claim schedules, this 10,000
# (CLAIM_SCHEDULE_SEED=<n> explores other schedules; a failing one is printed for replay).
soak: $(VENV)/.dev-installed
	CLAIM_SCHEDULES=$${CLAIM_SCHEDULES:-10000} $(PY) -m pytest tests/reliability/common/test_claim_schedules.py -q
	STREAM_RECOVERY_SCHEDULES=$${STREAM_RECOVERY_SCHEDULES:-10000} $(PY) -m pytest tests/reliability/stream_recovery/test_schedules.py -q
	JOB_CLAIM_SCHEDULES=$${JOB_CLAIM_SCHEDULES:-2000} $(PY) -m pytest tests/reliability/job_claim/test_schedules.py -q
	EXECUTION_ENGINE_SCHEDULES=$${EXECUTION_ENGINE_SCHEDULES:-2000} $(PY) -m pytest tests/reliability/execution_engine/test_schedules.py -q

deploy: synth
	$(CDK) deploy --all --app cdk.out $(if $(AWS_PROFILE),--profile $(AWS_PROFILE))

diff: synth
	$(CDK) diff --all --app cdk.out $(if $(AWS_PROFILE),--profile $(AWS_PROFILE))

# Re-resolve the full pinned set of Lambda runtime packages for cp314 / aarch64.
lock-lambda: $(VENV)/.synth-installed
	$(PY) -m infra.lock_lambda requirements-lambda.txt requirements-lambda.lock

clean:
	rm -rf cdk.out .build .pytest_cache .mypy_cache .ruff_cache
