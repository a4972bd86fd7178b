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
    delivery_key,
)
from slurm_sync.engine import CycleOptions, guard, limit, run_cycle
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.parse import ParseResult, Producer
from slurm_sync.slurm.query import JobFilter, SacctWindow
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner
from slurm_sync.store import Store
from tests.standin_listing import ListsFromSqueue

NOW = 1_795_700_000


class Running(ListsFromSqueue, SlurmReader):
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
    kinds = (Kind("enrol", Direction.START, opens=True),
             Kind("evict", Direction.STOP, destructive=True, closes=True))

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
        actions = [Action(self.name, "enrol", delivery_key(j), {}, "running")
                   for j in view.active if j.job_id not in observed
                   and not snapshot.done("enrol", delivery_key(j))]
        facts = [Fact("enrol", delivery_key(j), "the service has it") for j in view.active
                 if j.job_id in observed and not snapshot.done("enrol", delivery_key(j))]
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
    assert ("enrol", f"c/2/{NOW - 60}") not in site.applied and len(site.applied) == 2
    key = f"c/2/{NOW - 60}"
    assert [(o.action.key, o.status.value) for o in report.facts] == [(key, "already_done")]
    assert key in store.delivered(connector="site", kind="enrol")
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


class Ended(Running):
    """The jobs ran and ended: squeue no longer lists them, sacct does."""

    def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        return ParseResult((), (), Producer("24.11.0", "v0.0.42"))

    def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        ended = tuple(Job(job_id=j.job_id, cluster="c", start_time=j.start_time, hosts=("n1",),
                          end_time=NOW + 30, state=JobState.COMPLETED, source="sacct")
                      for j in self.jobs)
        return ParseResult(ended, (), Producer("24.11.0", "v0.0.42"))


def test_runs_a_connectors_own_kinds_open_are_tracked_looked_up_and_counted() -> None:
    """'enrol' opens a run, 'evict' closes it: the engine tracks enrolled runs, so once they
    end it counts them as ended and not closed, and the guard weighs evictions against them."""
    store = Store.memory()
    site = Site()
    run_cycle(Running(3), store, {"site": site}, CycleOptions(), now=NOW)
    assert [k for k, _ in site.applied] == ["enrol", "enrol"]  # c/2 is a fact

    class Keyed(Site):  # the ended runs carry the keys the site enrolled them under
        def plan(self, view: View, snapshot: Snapshot, direction: Direction, scope: Scope,
                 observed: Any = None) -> Plan:
            return Plan()

    report = run_cycle(Ended(3), store, {"site": Keyed()}, CycleOptions(), now=NOW + 60)
    assert report.lag["site"].ended_unstopped == 3 and report.lag["site"].oldest_end == NOW + 30
    kinds = Site.kind_table()
    assert kinds.opening() == ("enrol",) and kinds.closing() == ("evict",)
    evictions = [Action("site", "evict", f"c/{i}", {}, "") for i in range(1, 4)]
    view = View(now=NOW, active=(), ended=(Job(job_id=9, cluster="c"),), squeue_ok=True,
                sacct_ok=True)
    kept, reasons = guard(evictions, view, frozenset({"c/1", "c/2", "c/3"}), 0.5, False,
                          kinds=kinds)
    assert kept == [] and "3 stop/cancel action(s) not taken" in reasons[0]
