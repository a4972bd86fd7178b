"""The short chaos run (about two minutes): the real CLI every 2 s against the simulated Slurm
24.11 and a faulty cc-backend 1.5, one kill -9 mid-cycle, a 12 s syncer stop, a 20 s cc-backend
outage, two failing squeue, one empty sacct, one slow answer, then a drain. Each assertion of
check.py is its own test, so a failure names what broke; the long run is ``make chaos``.

    pytest tests/chaos/test_chaos.py -ra
    CHAOS_SEED=9 CHAOS_KEEP=/tmp/chaos pytest tests/chaos/test_chaos.py   # another seed, kept
    CHAOS_SERVICE=bank pytest tests/chaos/test_chaos.py                   # against the bank
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.check import Finding, assertions_of, check, figures
from tests.chaos.harness import Result, run_scenario
from tests.chaos.timeline import Scenario

SEED = int(os.environ.get("CHAOS_SEED", "7"))
SERVICE = os.environ.get("CHAOS_SERVICE", "clustercockpit")
SHOWN = 8
if SERVICE == "buildkite":
    pytest.skip("the Buildkite run is test_chaos_buildkite.py", allow_module_level=True)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, dict[str, list[Finding]]]:
    keep = os.environ.get("CHAOS_KEEP")
    work = Path(keep) / f"seed-{SEED}" if keep else tmp_path_factory.mktemp(f"chaos-{SEED}")
    if keep and work.exists():
        shutil.rmtree(work)
    result = run_scenario(Scenario.short(seed=SEED, service=SERVICE), work)
    return result, check(result)


def test_the_scenario_happened(outcome: tuple[Result, dict[str, list[Finding]]]) -> None:
    """Not a vacuous pass: the faults were injected and the drain ran to its end."""
    result, findings = outcome
    numbers: dict[str, Any] = figures(result, findings)
    faults = numbers["faults"]
    assert result.kills == result.scenario.kills, numbers
    assert faults["squeue_failed"] == result.scenario.squeue_failures, numbers
    assert faults["sacct_empty"] == result.scenario.sacct_empty, numbers
    assert faults["slow_answers"] == result.scenario.slow_answers, numbers
    assert faults["service_5xx"] and faults["service_hang"] + faults["service_reset"], numbers
    assert numbers["runs"] >= 200 and numbers["requeued_jobs"] and numbers["array_tasks"]
    assert result.drained, f"cc-backend's tables or the outbox still changed: {numbers}"


@pytest.mark.parametrize("assertion", assertions_of(SERVICE))
def test_assertion(outcome: tuple[Result, dict[str, list[Finding]]], assertion: str) -> None:
    result, findings = outcome
    found = findings[assertion]
    shown = "\n".join(f"  {f}" for f in found[:SHOWN])
    assert not found, (f"seed {result.scenario.seed} ({result.work}): {len(found)} finding(s)"
                       f" of '{assertion}':\n{shown}")
