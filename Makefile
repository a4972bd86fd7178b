# slurm-sync: everything a newcomer or CI needs, each target installing what it uses.
#   make demo   bring up the Slurm lab, submit a few jobs, show what slurm-sync reads
#   make test   lint, type-check, unit tests and doctests, the short chaos run (tests/chaos, ~2 min),
#               the short fuzz run (tests/fuzz, ~40 s), the unit tests on Python 3.9 (make py39),
#               and (as root) the lab tests on 22.05, 24.11, 26.05, the three versions side by side
#   make py39   the unit tests and doctests on the oldest Python pyproject.toml claims (3.9)
#   make fuzz   the long fuzz run: twenty times the inputs (SLURM_SYNC_FUZZ_SEED=N for others)
#   make chaos  the long chaos run: 1,000 jobs, three seeds against cc-backend (one on 1.4), one
#               against the bank, and 300 Buildkite jobs on two seeds, ~60 min
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LAB_VERSIONS ?= all
LAB_LIST := $(if $(filter all,$(LAB_VERSIONS)),22.05 24.11 26.05,$(LAB_VERSIONS))
IS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo yes)
# The examples in the code's docstrings (sync/ and connectors/, through pkg-links below), run by
# `make unit`, `make py39` and `make test`.
PKG_LINKS := build/typecheck
DOCTESTS := --doctest-modules $(PKG_LINKS)/slurm_sync
# The oldest Python that pyproject.toml's requires-python admits (RHEL 9's python3), and the
# virtual environment `make py39` tests it in.
PY_OLDEST := 3.9
VENV_OLDEST := $(VENV)/py$(subst .,,$(PY_OLDEST))
TEST_LOGS := build/test-logs

.PHONY: all venv pkg-links lint unit py39 fuzz lab-up lab-down test demo bench chaos clean

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

# The folders as the package they install as (slurm_sync, with connectors/ as
# slurm_sync.connectors), through a tree of links: mypy and pytest's doctests name a module by its
# folders, so `mypy sync connectors` or `pytest --doctest-modules sync connectors` would name them
# sync.* and connectors.*, a second copy of every module beside the slurm_sync.* they import.
pkg-links:
	@rm -rf $(PKG_LINKS) && mkdir -p $(PKG_LINKS)/slurm_sync
	@for f in sync/*; do case $$f in */__pycache__) ;; *) ln -s ../../../$$f $(PKG_LINKS)/slurm_sync/;; esac; done
	@ln -s ../../../connectors $(PKG_LINKS)/slurm_sync/connectors

lint: venv pkg-links
	$(BIN)/ruff check sync connectors tests bench
	cd $(PKG_LINKS) && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p slurm_sync

unit: venv pkg-links
	$(BIN)/pytest -q tests/unit $(DOCTESTS)

# Python $(PY_OLDEST): python$(PY_OLDEST) on PATH, else pyenv's, else uv's (`uv python install`, where
# uv is installed and can download), else Debian's or Ubuntu's python$(PY_OLDEST)-venv (as root,
# where the release has it). With none of them, the stamp is not made and `make py39` says so.
$(VENV_OLDEST)/.installed: pyproject.toml
	@py=; for c in python$(PY_OLDEST) $$(pyenv root 2>/dev/null)/versions/$(PY_OLDEST).*/bin/python$(PY_OLDEST); do \
	  if "$$c" -c 'import sys, venv; sys.exit("%d.%d" % sys.version_info[:2] != "$(PY_OLDEST)")' 2>/dev/null; then \
	    py=$$c; break; fi; done; \
	if [ -z "$$py" ] && command -v uv >/dev/null && uv python install $(PY_OLDEST); then \
	  py=$$(uv python find $(PY_OLDEST)); fi; \
	if [ -z "$$py" ] && [ "$(IS_ROOT)" = yes ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && apt-cache show python$(PY_OLDEST)-venv >/dev/null 2>&1 && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python$(PY_OLDEST)-venv && py=python$(PY_OLDEST); fi; \
	if [ -z "$$py" ]; then echo "NOTE: no Python $(PY_OLDEST) here (not on PATH, in pyenv, uv or apt)"; exit 0; fi; \
	echo "Python $(PY_OLDEST): $$py"; \
	rm -rf $(VENV_OLDEST) && "$$py" -m venv $(VENV_OLDEST) && \
	$(VENV_OLDEST)/bin/pip install -q --upgrade pip && \
	$(VENV_OLDEST)/bin/pip install -q -e '.[dev]' && touch $@

# mypy as well: lint's mypy cannot check for Python $(PY_OLDEST) (mypy 2 dropped it); this one
# (the newest that runs on $(PY_OLDEST)) finds a newer standard library API the tests do not reach.
PY_OLDEST_TESTS := $(VENV_OLDEST)/bin/pytest -q -p no:cacheprovider tests/unit $(DOCTESTS) \
	&& (cd $(PKG_LINKS) && ../../$(VENV_OLDEST)/bin/mypy --config-file ../../pyproject.toml \
	    --python-version $(PY_OLDEST) --cache-dir ../mypy-py$(subst .,,$(PY_OLDEST)) -p slurm_sync)
py39: $(VENV_OLDEST)/.installed pkg-links
	@[ -f $< ] || { echo "make py39: no Python $(PY_OLDEST) could be found or installed"; exit 1; }
	$(PY_OLDEST_TESTS)

# Mutated Slurm documents and configs (tests/fuzz); `make test` runs the same suite short.
fuzz: venv
	SLURM_SYNC_FUZZ=long $(BIN)/pytest -q tests/fuzz

lab-up:
	@if [ "$(IS_ROOT)" != yes ]; then echo "the lab runs Slurm daemons and needs root"; exit 1; fi
	lab/slurm-lab up $(LAB_VERSIONS)

lab-down:
	lab/slurm-lab down $(LAB_VERSIONS)

# As root, the lab comes up first and its tests must run (SLURM_SYNC_REQUIRE_LAB=1 turns a
# missing lab into a failure, not a skip). The lab tests spend their time waiting on Slurm and
# the versions are separate clusters, so each version's lab tests run in a pytest of their own
# (SLURM_SYNC_LAB_VERSIONS, tests/lab/conftest.py), the three in the background while the rest
# runs; their output goes to $(TEST_LOGS)/lab-VERSION.log and is shown at the end. A job started
# with `&` ignores SIGINT, and so does all it starts (test_loop_runs_cycles_until_interrupted's
# `slurm-sync --loop` then never stops): env --default-signal=INT undoes that, also when make
# itself was started ignoring SIGINT. Job control (set -m) gives each job a process group of its
# own, which an interrupted make kills whole. Python $(PY_OLDEST)'s unit tests run after the rest,
# still beside the lab. Without root the lab tests are skipped, said so. The exit code is
# non-zero if any run failed. (No recursive make in this recipe: `make -n test` would run that
# line for real.)
test: venv lint $(VENV_OLDEST)/.installed
	@mkdir -p $(TEST_LOGS); rc=0; pids=; \
	if [ "$(IS_ROOT)" = yes ]; then \
	  lab/slurm-lab up $(LAB_VERSIONS) || exit 1; \
	  set -m; for v in $(LAB_LIST); do \
	    SLURM_SYNC_REQUIRE_LAB=1 SLURM_SYNC_LAB_VERSIONS=$$v env --default-signal=INT \
	      $(BIN)/pytest -ra -p no:cacheprovider tests/lab > $(TEST_LOGS)/lab-$$v.log 2>&1 & \
	    pids="$$pids $$!"; \
	  done; set +m; \
	  trap 'for p in $$pids; do kill -- -$$p 2>/dev/null || kill $$p 2>/dev/null; done' EXIT; \
	  echo "lab tests of Slurm $(LAB_LIST) running in the background, output in $(TEST_LOGS)/lab-*.log"; \
	  $(BIN)/pytest -ra $(DOCTESTS) tests --ignore=tests/lab || rc=1; \
	else \
	  echo "NOTE: not root: the lab tests (real Slurm 22.05, 24.11, 26.05) are skipped; run 'make test' as root for everything."; \
	  $(BIN)/pytest -ra $(DOCTESTS) tests || rc=1; \
	fi; \
	if [ -f $(VENV_OLDEST)/.installed ]; then \
	  echo "unit tests, doctests and mypy on Python $(PY_OLDEST):"; \
	  $(PY_OLDEST_TESTS) || rc=1; \
	fi; \
	if [ -n "$$pids" ]; then \
	  set -- $$pids; summary=; \
	  for v in $(LAB_LIST); do wait $$1; r=$$?; shift; [ $$r = 0 ] || rc=1; summary="$$summary $$v: exit $$r;"; done; \
	  trap - EXIT; echo "lab tests (Slurm$$summary) output:"; \
	  for v in $(LAB_LIST); do echo "== $(TEST_LOGS)/lab-$$v.log"; cat $(TEST_LOGS)/lab-$$v.log; done; \
	fi; \
	exit $$rc

demo: venv lab-up
	$(BIN)/python lab/demo

bench: venv
	$(BIN)/python bench/parse_bench.py

# The long chaos run (tests/chaos/run.py): simulated Slurm 24.11, a faulty cc-backend (then the
# bank, then Buildkite with stand-in sbatch/scancel), five kill -9, a 60 s syncer stop, a 75 s
# service outage; figures go to BENCHMARKS.md, each seed's work folder stays in
# bench/out/chaos*/seed-N.
CHAOS_SEEDS ?= 1 2 3@1.4.4
CHAOS_JOBS ?= 1000
CHAOS_BK_SEEDS ?= 1 2
CHAOS_BK_JOBS ?= 300
chaos: venv
	$(BIN)/python -m tests.chaos.run $(foreach s,$(CHAOS_SEEDS),--seed $(s)) \
	  --jobs $(CHAOS_JOBS) --json bench/out/chaos.json --keep bench/out/chaos; cc=$$?; \
	$(BIN)/python -m tests.chaos.run --service bank --seed 1 \
	  --jobs $(CHAOS_JOBS) --json bench/out/chaos-bank.json --keep bench/out/chaos-bank; \
	bank=$$?; \
	$(BIN)/python -m tests.chaos.run --service buildkite $(foreach s,$(CHAOS_BK_SEEDS),--seed $(s)) \
	  --jobs $(CHAOS_BK_JOBS) --json bench/out/chaos-buildkite.json --keep bench/out/chaos-buildkite; \
	bk=$$?; exit $$((cc || bank || bk))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench/out
