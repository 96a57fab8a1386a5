# mlgate developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
PYTEST := $(VENV)/bin/pytest
RUFF   := $(VENV)/bin/ruff
STAMP  := $(VENV)/.requirements.stamp
REQS   := $(filter-out requirements/mlflow-ui.txt,$(wildcard requirements/*.txt))
PY_SRC := api model bench tests/unit tests/e2e tests/remote tests/loadgen.py tests/bounded.py plugins roles/mlgate/filter_plugins roles/image/library
ANSIBLE_PLAYBOOK := $(VENV)/bin/ansible-playbook
# Extra ansible-playbook arguments, e.g. make start-project ARGS="-e mlgate_https_port=8443"
ARGS ?=
# The embedded model registry (MLflow: SQLite + artifacts; MLFLOW_TRACKING_URI names a server
# instead), its UI's port, and extra arguments of `make retrain` (e.g. --param logreg.C=2.0).
REGISTRY := .mlgate/mlflow
MLFLOW_PORT ?= 5000
TRAIN_ARGS ?=
# Stack that status/logs/stop-project act on (mlgate_stack_name).
STACK ?= mlgate

.PHONY: help venv collections model retrain models mlflow-ui unit e2e molecule lint docs bench-api bench chaos test \
        start-project upgrade stop-project status logs clean docker tools stress

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) \
	  | awk 'BEGIN {FS = ":.*## "} {printf "  %-14s %s\n", $$1, $$2}'

venv: $(STAMP) ## create/update .venv from requirements/dev.txt, .venv/sslyze (only when requirements changed)

$(STAMP): $(REQS)
	test -x $(PY) || python3 -m venv $(VENV)
	test -x $(VENV)/sslyze/bin/python || python3 -m venv $(VENV)/sslyze
	@# the two installs at once: most of their time is waiting for downloads
	$(VENV)/sslyze/bin/pip install --disable-pip-version-check -q -r requirements/sslyze.txt & sslyze=$$!; \
	  $(PIP) install --disable-pip-version-check -q -r requirements/dev.txt; dev=$$?; \
	  wait $$sslyze && exit $$dev
	touch $@

model: $(STAMP) ## train the model unless model/artifacts is up to date; register it (a new version becomes @stable)
	$(PY) -m model.train --if-stale --alias-new stable --registry-store $(REGISTRY)

retrain: $(STAMP) ## train a new model version (TRAIN_ARGS="--param logreg.C=2.0"), register it as @candidate; deploys nothing
	$(PY) -m model.train --out $(REGISTRY)/retrain --revision retrain-$$(date +%s) --alias candidate --registry-store $(REGISTRY) $(TRAIN_ARGS)

models: $(STAMP) ## the registered model versions, their aliases and held-out metrics
	$(PY) -m model.registry --store $(REGISTRY) list

# The full mlflow (its server and UI), in a virtualenv of its own: `make mlflow-ui` serves it, the
# unit tests run it as a tracking server (tests/unit/test_registry_server.py).
$(VENV)/mlflow-ui/bin/mlflow: requirements/mlflow-ui.txt
	python3 -m venv $(VENV)/mlflow-ui
	$(VENV)/mlflow-ui/bin/pip install --disable-pip-version-check -q -r requirements/mlflow-ui.txt
	touch $@

mlflow-ui: $(STAMP) $(VENV)/mlflow-ui/bin/mlflow ## MLflow's UI for the embedded registry on 127.0.0.1:$(MLFLOW_PORT) (installs mlflow into .venv/mlflow-ui once)
	@mkdir -p $(REGISTRY)
	MLFLOW_DISABLE_TELEMETRY=$${MLFLOW_DISABLE_TELEMETRY:-true} \
	  $(VENV)/mlflow-ui/bin/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) \
	  --backend-store-uri sqlite:///$(abspath $(REGISTRY))/mlflow.db \
	  --default-artifact-root $(abspath $(REGISTRY))/artifacts

unit: $(STAMP) $(VENV)/mlflow-ui/bin/mlflow ## Python unit tests (with the real-dataset fast-path test and a real MLflow tracking server)
	$(PYTEST) tests/unit

lint: $(STAMP) ## ruff, yamllint, ansible-lint (production profile), argument_specs vs defaults
	$(RUFF) check $(PY_SRC) scripts
	$(RUFF) format --check $(PY_SRC) scripts
	$(VENV)/bin/yamllint --strict .
	$(VENV)/bin/ansible-lint --nocolor -q
	$(PY) scripts/check_argument_specs.py
	$(PY) scripts/gen_variables_doc.py --check

docs: $(STAMP) ## regenerate docs/variables.md from the roles' argument_specs
	$(PY) scripts/gen_variables_doc.py

bench-api: model ## predict latency and req/s: ours (gunicorn) vs the exam-style reference
	$(PY) -m bench.api

chaos: venv collections ## crash, rolling updates, reloads, hostile input, slowhttptest under load: prints failures
	MLGATE_E2E_VARS=bench/chaos.yml MLGATE_E2E_SLOW_SECONDS=25 $(PYTEST) -s -p no:cacheprovider \
	  tests/e2e/test_resilience.py tests/e2e/test_hostile.py

bench: venv collections ## gateway benchmark: reference vs direct vs full gateway (deploys bench stacks)
	$(PY) -m bench.gateway $(BENCH_ARGS)

collections: $(STAMP) ## install the pinned Ansible collections (none when the ansible package has them)
	$(VENV)/bin/ansible-galaxy collection install -r requirements.yml -p .ansible/collections >/dev/null

docker: ## make sure a Docker engine runs here (installs docker.io, starts dockerd)
	scripts/ensure-docker.sh

tools: ## install the Debian packages the tests call (debootstrap, wrk, testssl.sh), then `docker`
	scripts/ensure-tools.sh

start-project: venv collections ## deploy the whole stack with playbooks/site.yml (ARGS=... for extra options)
	$(ANSIBLE_PLAYBOOK) playbooks/site.yml $(ARGS)

upgrade: venv collections ## refresh the base image with Debian's updates, rebuild every image on it, roll them out
	$(ANSIBLE_PLAYBOOK) playbooks/site.yml -e docker_host_base_refresh=true $(ARGS)

stop-project: venv ## remove the stack's containers and network (keeps certs, credentials, model)
	$(ANSIBLE_PLAYBOOK) playbooks/teardown.yml $(ARGS)

status: ## containers of the stack, their health and published ports
	@docker ps -a --filter label=io.mlgate.stack=$(STACK) \
	  --format 'table {{.Names}}\t{{.Status}}\t{{.Image}}\t{{.Ports}}'

logs: ## last log lines of every container of the stack (LINES=50)
	@for c in $$(docker ps -a --filter label=io.mlgate.stack=$(STACK) --format '{{.Names}}' | sort); do \
	  echo "==> $$c <=="; docker logs --tail $${LINES:-50} $$c 2>&1; done

clean: venv ## stop-project, then also remove volumes, the CA, credentials, target files and the model
	@echo "make clean: removes the stack's CA (.mlgate/<stack>/ca/ca.key, .mlgate/<stack>/ca.crt):" \
	  "clients that trust that ca.crt will need the new one the next deploy creates"
	$(ANSIBLE_PLAYBOOK) playbooks/teardown.yml -e mlgate_teardown_purge=true $(ARGS)
	rm -rf model/artifacts

e2e: venv collections ## end-to-end tests: deploy a throwaway stack (mlgate-e2e), test it, remove it
	$(PYTEST) tests/e2e

# Molecule scenarios (molecule/<name>/). `make molecule SCENARIOS="certs nginx"` runs some of
# them. They run in MOLECULE_LANES, lanes side by side separated by `|`, each lane in turn;
# `name@dep` waits until dep has passed, `name^dep` until before converge, `dep.converge` until
# dep has converged (scripts/run-molecule.sh). MOLECULE_LANES= runs every
# scenario in turn, in one lane.
SCENARIOS ?= docker_host certs htpasswd api nginx monitoring default remote
MOLECULE_LANES ?= docker_host api default | certs htpasswd nginx@api,default.converge monitoring | remote@docker_host^api.converge

molecule: venv collections ## molecule test of each scenario (three lanes), with durations
	MOLECULE_LANES="$(MOLECULE_LANES)" scripts/run-molecule.sh $(SCENARIOS)

# lint and unit (at once, --output-sync: each one's output in one piece) run beside molecule, at a
# low CPU priority (nice 15: they use what the scenarios leave idle, and do not slow the lane
# every other scenario waits for), their output in .mlgate/checks.log, printed when molecule is
# done; red if any of them is red. A failed scenario's digest (molecule-logs/<name>.why) comes last.
test: tools venv collections ## everything CI runs: host tools, lint, unit tests, every molecule scenario
	@mkdir -p .mlgate; \
	nice -n 15 $(MAKE) --no-print-directory -j2 --output-sync=target lint unit >.mlgate/checks.log 2>&1 & checks=$$!; \
	echo "test: lint and unit run beside molecule (output: .mlgate/checks.log)"; \
	$(MAKE) --no-print-directory molecule; mol=$$?; \
	wait $$checks; chk=$$?; \
	echo "==> lint and unit, .mlgate/checks.log <=="; cat .mlgate/checks.log; \
	[ $$chk = 0 ] || echo "test: lint or unit FAILED (exit $$chk)"; \
	[ $$mol = 0 ] || { cat .mlgate/molecule-logs/*.why 2>/dev/null; echo "test: molecule FAILED (exit $$mol)"; }; \
	[ $$chk = 0 ] && [ $$mol = 0 ]

stress: ## `make test` in fresh clones, caches removed, one core busy (stress-ng), RUNS times in a row
	scripts/stress-test.sh $(or $(RUNS),1)
