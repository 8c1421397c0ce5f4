# kvm_ras.poison_guard: the two commands in README.md are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.cache/collections
export ANSIBLE_FORCE_COLOR := 0
export PY_COLORS := 0

MOLECULE_SCENARIOS ?= $(sort $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))
DEMO_HOSTS ?= 3
DEMO_GUESTS ?= 6

.PHONY: help venv deps facts sanity lint unit molecule integration test demo lab-up lab-status lab-down changelog clean

help:
	@echo "make demo   - bring up the local hypervisor lab and evacuate one hypervisor"
	@echo "make test   - every check: sanity, lint, unit, molecule, integration (needs root)"
	@echo "make venv | deps | facts | sanity | lint | unit | molecule | integration | lab-up | lab-status | lab-down"

$(STAMP): requirements/dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed for ansible-core 2.19 (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt
	touch $@

venv: $(STAMP)
	@tools/collection-link >/dev/null

# Everything the tests need on the machine (Debian packages, the lab image, the poison lab's
# kernel), installed before pytest collects anything; ends by printing the machine facts.
deps:
	tools/test-deps
	tools/eda-setup >/dev/null

facts:
	@tools/machine-facts

sanity: venv
	tools/sanity

lint: venv
	$(BIN)/ansible-lint --profile production
	$(BIN)/antsibull-changelog lint

unit: venv
	tools/pytest-run tests/unit -q

molecule: venv
	@[ -n "$(MOLECULE_SCENARIOS)" ] || { echo "no Molecule scenarios found" >&2; exit 1; }
	lab/hvlab image
	@for s in $(MOLECULE_SCENARIOS); do \
	  echo "==> molecule test -s $$s"; \
	  $(BIN)/molecule test -s $$s || exit 1; \
	done

# The last step of `make test`: one plain pytest run over the integration tests (its closing
# line is the summary CI reads; the unit tests ran in `make unit`, before the slow steps).
integration: venv
	tools/pytest-run tests/integration

test: venv
	$(MAKE) deps
	$(MAKE) sanity
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) molecule
	$(MAKE) integration

lab-up: venv
	lab/hvlab up --hosts $(DEMO_HOSTS)

lab-status:
	lab/hvlab status

lab-down:
	lab/hvlab down

demo: venv
	tools/demo --hosts $(DEMO_HOSTS) --guests $(DEMO_GUESTS)

changelog: venv
	$(BIN)/antsibull-changelog lint

clean:
	rm -rf .cache tests/output
