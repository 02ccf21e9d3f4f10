# Two commands a new user needs: `make demo` (the retraining pipeline end to end on the embedded
# defaults) and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.llmops-installed
PYTEST_ARGS ?=

.PHONY: demo test install lint bench clean-home airflow

$(STAMP): setup.cfg pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	# torch first, pinned: 2.13.0 is the CPU wheel on this machine's disk. An unpinned torch
	# request would pull a multi-GB CUDA build from the index.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[airflow,train,dev]"
	# checkov (tests/test_k8s_policy.py: Kubernetes and Dockerfile policies) in a virtualenv of its
	# own: it pins packages that conflict with constraints.txt. About 25 s on a 2-core machine.
	@test -x $(VENV)/tools/checkov/bin/python || $(PYTHON) -m venv $(VENV)/tools/checkov
	$(VENV)/tools/checkov/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/tools/checkov/bin/python -m pip install --quiet checkov==3.3.30
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/llmops demo

# Airflow (API server, scheduler, DAG processor, triggerer; LocalExecutor) and MLflow as services on
# loopback for ./.llmops; prints the URLs and the login. Ctrl-C stops them. UP_ARGS="--airflow-port 8081".
UP_ARGS ?=
airflow: $(STAMP)
	$(BIN)/llmops up $(UP_ARGS)

# Two workers (pytest-xdist; a 2-core machine's CPUs), a test file at a time each (--dist loadfile:
# a file's module fixtures, such as the `llmops up` stack, stay in one process). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/pytest -m "not gpu" -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check llmops_tasks plugins dags tests bench scripts

bench: $(STAMP)
	$(BIN)/python bench/dag_parse.py

clean-home:
	rm -rf .llmops
