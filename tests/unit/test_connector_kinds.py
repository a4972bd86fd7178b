"""A connector declares its kinds and the engine treats each as declared: a site's new
start-side kind counts as a start for --direction and --limit, a destructive one is held by the
guard, an undeclared one is the connector's error, and facts are recorded without a call."""

from __future__ import annotations

from typing import Any, ClassVar

from slurm_sync.actions import Action, Outcome
from slurm_sync.connector import (
    Connector,
    Direction,
    Fact,
    Kind,
    Plan,
    Scope,
    SlurmNeeds,
    Snapshot,
    View,
)
from slurm_sync.engine import CycleOptions, guard, limit, run_cycle
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.parse import ParseResult, Producer
from slurm_sync.slurm.query import JobFilter, SacctWindow
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner
from slurm_sync.store import Store

NOW = 1_795_700_000


class Running(SlurmReader):
    def __init__(self, count: int, fail: bool = False) -> None:
        super().__init__(Runner())
        self.jobs = [Job(job_id=i, cluster="c", start_time=NOW - 60, hosts=("n1",),
                         state=JobState.RUNNING) for i in range(1, count + 1)]

    def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        return ParseResult(tuple(self.jobs), (), Producer("24.11.0", "v0.0.42"))

    def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        return ParseResult((), (), Producer("24.11.0", "v0.0.42"))


class Site(Connector):
    """A site's connector: it 'enrols' each running job (its own start-side kind), 'evicts'
    some (destructive, its own), says some need nothing (facts), and has a bug (a kind it
    never declared)."""

    name: ClassVar[str] = "site"
    schema: ClassVar[dict[str, Any]] = {"type": "object"}
    kinds = (Kind("enrol", Direction.START), Kind("evict", Direction.STOP, destructive=True))

    def __init__(self, undeclared: bool = False) -> None:
        super().__init__({})
        self.undeclared = undeclared
        self.applied: list[tuple[str, str]] = []

    def needs(self) -> SlurmNeeds:
        return SlurmNeeds(squeue=JobFilter(), sacct=True)

    def observe(self, view: View, snapshot: Snapshot) -> frozenset[int]:
        return frozenset({2})  # what the service says it holds already

    def plan(self, view: View, snapshot: Snapshot, direction: Direction, scope: Scope,
             observed: Any = None) -> Plan:
        actions = [Action(self.name, "enrol", f"c/{j.job_id}", {}, "running")
                   for j in view.active if j.job_id not in observed
                   and not snapshot.done("enrol", f"c/{j.job_id}")]
        facts = [Fact("enrol", f"c/{i}", "the service has it") for i in sorted(observed)
                 if not snapshot.done("enrol", f"c/{i}")]
        if self.undeclared:
            actions.append(Action(self.name, "explode", "c/9", {}, "a bug"))
        return Plan(tuple(actions), tuple(facts))

    def apply(self, action: Action) -> Outcome:
        self.applied.append((action.kind, action.key))
        return Outcome.done(action)


def test_a_connectors_own_start_kind_obeys_direction_and_limit() -> None:
    store = Store.memory()
    site = Site()
    report = run_cycle(Running(5), store, {"site": site},
                       CycleOptions(direction=Direction.STOP), now=NOW)
    assert site.applied == [] and report.planned == []
    report = run_cycle(Running(5), store, {"site": site},
                       CycleOptions(scope=Scope(limit=2)), now=NOW)
    assert [k for k, _ in site.applied] == ["enrol", "enrol"] and len(report.deferred) == 2


def test_facts_are_recorded_without_a_call_and_undeclared_kinds_are_the_connectors_error(
) -> None:
    store = Store.memory()
    site = Site(undeclared=True)
    report = run_cycle(Running(3), store, {"site": site}, CycleOptions(), now=NOW)
    assert ("enrol", "c/2") not in site.applied and len(site.applied) == 2
    assert [(o.action.key, o.status.value) for o in report.facts] == [("c/2", "already_done")]
    assert "c/2" in store.delivered(connector="site", kind="enrol")
    assert report.connector_errors == [
        "site: connector 'site' planned an action of kind 'explode', which it does not declare "
        "(its kinds: enrol, evict)"]
    assert report.exit_code == 4


def test_the_guard_and_limit_follow_the_declared_kinds() -> None:
    kinds = Site.kind_table()
    evictions = [Action("site", "evict", f"c/{i}", {}, "") for i in range(3)]
    view = View(now=NOW, squeue_ok=False, sacct_ok=True)
    kept, reasons = guard([*evictions, Action("site", "enrol", "c/9", {}, "")], view,
                          frozenset(), 0.5, False, kinds=kinds)
    assert [a.kind for a in kept] == ["enrol"] and "Slurm query failed" in reasons[0]
    kept, deferred = limit([*evictions, Action("site", "enrol", "c/9", {}, "")], 1, kinds)
    assert [a.kind for a in kept] == ["evict", "enrol"] and len(deferred) == 2
