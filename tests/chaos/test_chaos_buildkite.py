"""The short Buildkite chaos run (about two minutes): builds of 150 Buildkite jobs arrive over
40 s (some cancelled soon after, some while their jobs run) and the real CLI, every 2 s,
submits them to the simulated Slurm 24.11 with sbatch and cancels them with scancel, while the
simulated agents run them against the Buildkite emulator; one kill -9 mid-cycle and two right
after an sbatch, a 12 s syncer stop, a 20 s Buildkite outage and faulted REST requests, sbatch
failing, losing its answer and hanging past slurm.timeout, a failing scancel, two failing
squeue, one empty sacct, one slow answer; then a drain. Each assertion of check.py is its own
test, so a failure names what broke.

    pytest tests/chaos/test_chaos_buildkite.py -ra
    CHAOS_SEED=9 CHAOS_KEEP=/tmp/chaos pytest tests/chaos/test_chaos_buildkite.py
    python -m tests.chaos.run --service buildkite --seed 1 --jobs 300     # the long run
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.check import BUILDKITE_ASSERTIONS, Finding, check, figures
from tests.chaos.harness import Result, run_scenario
from tests.chaos.timeline import Scenario

SEED = int(os.environ.get("CHAOS_SEED", "7"))
SHOWN = 8


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, dict[str, list[Finding]]]:
    keep = os.environ.get("CHAOS_KEEP")
    work = (Path(keep) / f"buildkite-seed-{SEED}" if keep
            else tmp_path_factory.mktemp(f"chaos-bk-{SEED}"))
    if keep and work.exists():
        shutil.rmtree(work)
    result = run_scenario(Scenario.short(seed=SEED, service="buildkite"), work)
    return result, check(result)


def test_the_scenario_happened(outcome: tuple[Result, dict[str, list[Finding]]]) -> None:
    """Not a vacuous pass: jobs were submitted, run and cancelled, the faults were injected
    (sbatch's and scancel's among them) and the drain ran to its end."""
    result, findings = outcome
    numbers: dict[str, Any] = figures(result, findings)
    faults = numbers["faults"]
    scenario = result.scenario
    assert faults["squeue_failed"] == scenario.squeue_failures, numbers
    assert faults["sacct_empty"] == scenario.sacct_empty, numbers
    assert faults["service_5xx"] and faults["service_hang"] + faults["service_reset"], numbers
    # each taken by the next call after its moment: most, if not all, fire in the short run
    fired = (faults["sbatch_failed"] + faults["sbatch_lost"] + faults["sbatch_hang"]
             + faults["sbatch_kill"] + faults["scancel_failed"])
    planned = (scenario.sbatch_failures + scenario.sbatch_lost + scenario.sbatch_hangs
               + scenario.sbatch_kills + scenario.scancel_failures)
    assert fired >= planned - 2 and faults["sbatch_kill"] >= 1, numbers
    assert faults["sbatch_lost"] + faults["sbatch_hang"] >= 1, numbers
    assert result.kills >= scenario.kills + 1 and numbers["kills_by_sbatch"] >= 1, numbers
    assert numbers["bk_jobs_ours"] >= 100 and numbers["arrays"] and numbers["slurm_jobs"]
    assert numbers["cancelled_before_running"] and numbers["cancelled_while_running"], numbers
    assert numbers["scancel_calls"], numbers
    assert result.drained, f"Buildkite's jobs, Slurm's or the outbox still changed: {numbers}"


@pytest.mark.parametrize("assertion", BUILDKITE_ASSERTIONS)
def test_assertion(outcome: tuple[Result, dict[str, list[Finding]]], assertion: str) -> None:
    result, findings = outcome
    found = findings[assertion]
    shown = "\n".join(f"  {f}" for f in found[:SHOWN])
    assert not found, (f"seed {result.scenario.seed} ({result.work}): {len(found)} finding(s)"
                       f" of '{assertion}':\n{shown}")
