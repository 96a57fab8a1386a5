# mlgate developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
PYTEST := $(VENV)/bin/pytest
RUFF   := $(VENV)/bin/ruff
STAMP  := $(VENV)/.requirements.stamp
REQS   := $(wildcard requirements/*.txt)
PY_SRC := api model bench tests/unit

.PHONY: help venv model retrain unit lint bench-api test

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) \
	  | awk 'BEGIN {FS = ":.*## "} {printf "  %-12s %s\n", $$1, $$2}'

venv: $(STAMP) ## create/update .venv from requirements/dev.txt (only when requirements changed)

$(STAMP): $(REQS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q -r requirements/dev.txt
	touch $@

model: $(STAMP) ## train the model unless model/artifacts is up to date
	$(PY) -m model.train --if-stale

retrain: $(STAMP) ## train a new model version even if nothing changed (rolling update)
	$(PY) -m model.train --revision $$(date +%s)

unit: $(STAMP) ## Python unit tests (includes the real-dataset fast-path test)
	$(PYTEST) tests/unit

lint: $(STAMP) ## ruff (lint + format check)
	$(RUFF) check $(PY_SRC)
	$(RUFF) format --check $(PY_SRC)

bench-api: model ## predict latency and req/s: ours (gunicorn) vs the exam-style reference
	$(PY) -m bench.api

test: lint unit ## everything CI runs
