"""A garbage Slurm answer never produces a stop: mutated squeue documents through a whole cycle.

Every run of a captured squeue document is tracked (its start delivered), and the connector is
the most dangerous kind there is: it stops every tracked run squeue does not show running, so
an empty, truncated or wrong answer would stop them all. sacct confirms no end. Whatever the
mutated answer, the cycle may stop at most what the guard lets through unconfirmed
(``stop_guard_share`` of the tracked runs, or ``stop_guard_min``), and nothing at all when the
document does not parse (a failed query).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from slurm_sync.actions import Action, Outcome
from slurm_sync.connector import (
    Connector,
    Direction,
    Scope,
    SlurmNeeds,
    Snapshot,
    View,
    delivery_key,
)
from slurm_sync.engine import CycleOptions, run_cycle
from slurm_sync.errors import SlurmError
from slurm_sync.slurm.parse import ParseResult, parse_squeue
from slurm_sync.slurm.query import JobFilter, SacctWindow
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner
from slurm_sync.store import Store
from tests.fuzz.conftest import SEED, inputs
from tests.fuzz.mutate import mutate
from tests.standin_listing import ListsFromSqueue

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"
DOCUMENTS = sorted(FIXTURES.glob("*/squeue-*.json"))
PER_DOCUMENT = inputs(10)
NOW = 1_795_400_000.0
SHARE, FLOOR = 0.5, 2


class Mutated(ListsFromSqueue, SlurmReader):
    """squeue answers the mutated text (parsed as slurm-sync parses it); sacct has no end."""

    def __init__(self, text: str) -> None:
        super().__init__(Runner())
        self.text = text

    def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        return parse_squeue(self.text, cluster="fuzz")

    def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        empty = parse_squeue('{"jobs": [], "errors": [], "warnings": []}', cluster="fuzz")
        return ParseResult(jobs=(), skipped=(), producer=empty.producer)


class StopsOnAbsence(Connector):
    """Stops every tracked run squeue does not show running."""

    name = "reckless"
    schema: ClassVar[Mapping[str, Any]] = {"type": "object"}

    def needs(self) -> SlurmNeeds:
        return SlurmNeeds(squeue=JobFilter(), sacct=True)

    def plan(self, view: View, snapshot: Snapshot, direction: Direction,
             scope: Scope, observed: Any = None) -> list[Action]:
        running = {delivery_key(j) for j in view.active if j.state.active}
        tracked = snapshot.delivered.get("start", frozenset()) - snapshot.delivered.get(
            "stop", frozenset())
        return [Action(self.name, "stop", key) for key in sorted(tracked - running)]

    def apply(self, action: Action) -> Outcome:
        return Outcome.done(action)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_garbage_squeue_answer_stops_no_more_than_the_guard_allows(
    document: Path, tried: Counter[str]
) -> None:
    original = document.read_text(encoding="utf-8")
    try:
        runs = [j for j in parse_squeue(original, cluster="fuzz").jobs if j.start_time]
    except SlurmError:
        pytest.skip("the capture itself does not parse")
    if not runs:
        pytest.skip("no run to track")
    keys = [delivery_key(j) for j in runs]
    name = f"{document.parent.name}/{document.name}"
    for index in range(PER_DOCUMENT):
        rng = random.Random(f"{SEED}:cycle:{name}:{index}")
        text, what = mutate(original, rng)
        store = Store.memory()
        store.record_outcomes(outcomes=[Outcome.done(Action("reckless", "start", k))
                                        for k in keys], now=NOW - 600)
        report = run_cycle(Mutated(text), store, {"reckless": StopsOnAbsence({})},
                           CycleOptions(stop_guard_share=SHARE, stop_guard_min=FLOOR),
                           now=NOW)
        tried["cycle"] += 1
        stops = [o for o in report.outcomes if o.action.kind == "stop"]
        context = f"seed {SEED}, {name}, input {index}: {what}"
        assert not report.connector_errors, f"{context}: {report.connector_errors}"
        if report.slurm_errors:
            assert stops == [], f"{context}: a failed query stopped {len(stops)}"
        assert len(stops) <= max(SHARE * len(keys), FLOOR), (
            f"{context}: {len(stops)} of {len(keys)} tracked runs stopped on squeue's word alone")
