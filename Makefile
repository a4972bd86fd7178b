# slurm-sync: everything a newcomer or CI needs, each target installing what it uses.
#   make demo   bring up the Slurm lab, submit a few jobs, show what slurm-sync reads
#   make test   lint, type-check, unit tests, the short chaos run (tests/chaos, ~2 min), the
#               short fuzz run (tests/fuzz, ~40 s), and (as root) the lab tests on 22.05, 24.11, 26.05
#   make fuzz   the long fuzz run: twenty times the inputs (SLURM_SYNC_FUZZ_SEED=N for others)
#   make chaos  the long chaos run: 1,000 jobs, three seeds against cc-backend (one on 1.4) and
#               one against the bank, ~45 min
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LAB_VERSIONS ?= all
IS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo yes)

.PHONY: all venv lint unit fuzz lab-up lab-down test demo bench chaos clean

all: test

$(VENV)/.installed: pyproject.toml
	@if ! $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null; then \
	  if [ "$(IS_ROOT)" = yes ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	  else echo "python3 has no venv module: install python3-venv (as root: make venv)"; exit 1; fi; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(BIN)/ruff check sync connectors tests bench
	$(BIN)/mypy sync connectors

unit: venv
	$(BIN)/pytest -q tests/unit

# Mutated Slurm documents and configs (tests/fuzz); `make test` runs the same suite short.
fuzz: venv
	SLURM_SYNC_FUZZ=long $(BIN)/pytest -q tests/fuzz

lab-up:
	@if [ "$(IS_ROOT)" != yes ]; then echo "the lab runs Slurm daemons and needs root"; exit 1; fi
	lab/slurm-lab up $(LAB_VERSIONS)

lab-down:
	lab/slurm-lab down $(LAB_VERSIONS)

# As root, the lab comes up first and its tests must run (SLURM_SYNC_REQUIRE_LAB=1 turns a
# missing lab into a failure, not a skip). Without root the lab tests are skipped, said so.
test: venv lint
	@if [ "$(IS_ROOT)" = yes ]; then \
	  lab/slurm-lab up $(LAB_VERSIONS) && SLURM_SYNC_REQUIRE_LAB=1 $(BIN)/pytest -ra tests; \
	else \
	  echo "NOTE: not root: the lab tests (real Slurm 22.05, 24.11, 26.05) are skipped; run 'make test' as root for everything."; \
	  $(BIN)/pytest -ra tests; \
	fi

demo: venv lab-up
	$(BIN)/python lab/demo

bench: venv
	$(BIN)/python bench/parse_bench.py

# The long chaos run (tests/chaos/run.py): simulated Slurm 24.11, a faulty cc-backend (then the
# bank), five kill -9, a 60 s syncer stop, a 75 s service outage; figures go to BENCHMARKS.md,
# each seed's work folder stays in bench/out/chaos*/seed-N.
CHAOS_SEEDS ?= 1 2 3@1.4.4
CHAOS_JOBS ?= 1000
chaos: venv
	$(BIN)/python -m tests.chaos.run $(foreach s,$(CHAOS_SEEDS),--seed $(s)) \
	  --jobs $(CHAOS_JOBS) --json bench/out/chaos.json --keep bench/out/chaos; cc=$$?; \
	$(BIN)/python -m tests.chaos.run --service bank --seed 1 \
	  --jobs $(CHAOS_JOBS) --json bench/out/chaos-bank.json --keep bench/out/chaos-bank; \
	bank=$$?; exit $$((cc || bank))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench/out
