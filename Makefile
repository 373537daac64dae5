# dbops: every set-up step of a fresh machine lives here (see README.md).
SHELL := /bin/bash
PYTHON_VERSION ?= 3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install stores run stop status test unit lint lock bench-parse bench bench-smoke

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@command -v uv >/dev/null || python3 -m pip install -q uv
	@test -x $(PY) || uv venv -q --python $(PYTHON_VERSION) $(VENV)
	uv pip install -q --python $(PY) --compile-bytecode -r requirements-dev.txt
	uv pip install -q --python $(PY) -e .
	@touch $(STAMP)

## install: the virtualenv with the pinned dependencies and the dbops package (editable)
install: $(STAMP)

## stores: start the local stores (PostgreSQL, Redis, Mongo, Kafka, S3, SSH target)
stores: install
	$(PY) -m devstack up

## run: the stores plus Airflow with the dbops DAGs; prints the UI address and login
run: stores
	$(PY) -m devstack up airflow
	@$(PY) -m devstack info

## stop: stop Airflow and every local store started by this project
stop:
	@test -x $(PY) && $(PY) -m devstack down airflow postgres walreceiver redis mongo kafka s3 offsite || true

status:
	@$(PY) -m devstack status

## test: the whole suite against real local stores (starts what is not running, stops it after)
test: install
	$(PY) -m devstack with -- $(PY) -m pytest $(PYTEST_ARGS)

## unit: the pure tests, no server started (seconds)
unit: install
	$(PY) -m pytest -q tests/unit

# every shell script of the repository: *.sh and files whose first line is a sh/bash shebang
SHELL_FILES = $(shell find . \( -path ./.venv -o -path ./.git -o -path ./.devstack -o -path ./test-artifacts \
	-o -path ./bench/data -o -name node_modules \) -prune -o -type f -print \
	| xargs awk 'FNR == 1 { if (FILENAME ~ /\.sh$$/ || /^#!.*[/ ](ba|da)?sh( |$$)/) print FILENAME; nextfile }' | sort)

## lint: ruff (lint and format check), mypy on the dbops package, shellcheck on every shell script
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/shellcheck $(SHELL_FILES)

## lock: re-resolve the pinned locks from requirements*.in
lock:
	uv pip compile -q --python-version $(PYTHON_VERSION) requirements.in -o requirements.txt
	uv pip compile -q --python-version $(PYTHON_VERSION) requirements-dev.in -o requirements-dev.txt

## bench-parse: parse time of the DAG files beyond `import airflow` (recorded, not asserted)
bench-parse: install
	$(PY) bench/dag_parse.py --runs 5 --json bench/results/dag_parse.json

## bench: old way vs dbops, full sizes (~57 min on 2 cores, needs `make stores`): bench/results/latest.json + docs/benchmarks.md
bench: install
	$(PY) -m bench

## bench-smoke: every pair on tiny data, once, into a temporary folder; fails if a pair fails
bench-smoke: install
	$(PY) -m bench --smoke --out $$(mktemp -d)
