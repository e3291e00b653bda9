# Every target installs what it needs itself: a fresh clone runs `make test` with nothing else.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
export ARCHAUDIT_CACHE ?= $(HOME)/.cache/archaudit
export PIP_DISABLE_PIP_VERSION_CHECK := 1
PYTEST_ARGS ?=

.PHONY: help deps venv bins tools lint unit integration e2e faults test bench image demo demo-status demo-down clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

deps:  ## Debian packages used by the tests (docker-registry, promtool)
	@hack/install-deps.sh

venv: $(VENV)/.stamp  ## Python venv with archaudit and the dev tools

$(VENV)/.stamp: pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

bins:  ## build kube-apiserver, etcd, kwok, helm... from Go modules (cached in ~/.cache/archaudit)
	@hack/build-cluster-bins.sh >/dev/null

lint: venv  ## ruff, mypy --strict, import-linter layers
	$(VENV)/bin/ruff check operator tests
	$(VENV)/bin/ruff format --check operator tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: venv  ## pure-logic tests, no services
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: venv deps  ## against a real docker-registry
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

e2e: venv deps bins  ## against a real kube-apiserver, etcd, scheduler, controller-manager, kwok
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

faults: venv deps bins  ## fault matrix under load (tests/faults), the long cases included
	ARCHAUDIT_FAULTS_LONG=1 $(PY) -m pytest tests/faults -s $(PYTEST_ARGS)

test: deps venv bins lint  ## everything CI runs: lint + unit + integration + e2e + the short fault cases
	$(PY) -m pytest tests/unit tests/integration tests/e2e tests/faults --durations=15 $(PYTEST_ARGS)

bench: venv deps bins tools  ## benchmarks; figures go to BENCHMARKS.md
	$(PY) -m pytest tests/bench -s -p no:randomly $(PYTEST_ARGS)

demo: venv deps bins  ## start registry + control plane + archaudit in the background, print how to use it
	$(PY) -m tests.harness.demo up

image: venv deps  ## build the image with buildah (local Debian base; amd64, arm64, arm/v7 via qemu), push it to a test registry, check it
	ARCHAUDIT_IMAGE_TESTS=1 $(PY) -m pytest tests/image -s $(PYTEST_ARGS)

demo-status:  ## what the demo runs
	@$(PY) -m tests.harness.demo status

tools:  ## actionlint (cached in ~/.cache/archaudit/bin/tools)
	@hack/build-tools.sh >/dev/null

demo-down:  ## stop everything `make demo` started
	@test -x $(PY) && $(PY) -m tests.harness.demo down || true

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
