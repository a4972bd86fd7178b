"""run_cycle's orchestration on captured Slurm documents: retries through the outbox, the
watermark's rules, --limit, --dry-run. Slurm's answers are the lab captures of 24.11."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from slurm_sync.actions import Action, Outcome, Status
from slurm_sync.connector import STOP_KIND, Direction, Kind, Scope
from slurm_sync.connectors.events import EventsConnector
from slurm_sync.engine import CycleOptions, run_cycle
from slurm_sync.errors import SlurmCommandError
from slurm_sync.slurm.parse import ParseResult, parse_sacct, parse_squeue
from slurm_sync.slurm.query import JobFilter, SacctWindow
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner
from slurm_sync.store import Store
from tests.standin_listing import ListsFromSqueue

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "slurm" / "24.11"
TS0 = 1_795_400_000.0
TS1 = TS0 + 60
TS2 = TS0 + 4000


class CapturedSlurm(ListsFromSqueue, SlurmReader):
    """A reader answering with the 24.11 lab captures (or failing, when told to)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(Runner())
        self.fail = fail
        self.windows: list[SacctWindow] = []

    def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        if self.fail:
            raise SlurmCommandError(["squeue", "--json"], 1, "Unable to contact slurm controller")
        return parse_squeue((FIXTURES / "squeue-socket1.json").read_bytes())

    def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        self.windows.append(window)
        if self.fail:
            raise SlurmCommandError(["sacct", "--json"], 1, "Problem talking to the database")
        return parse_sacct((FIXTURES / "sacct.json").read_bytes())


class FlakyEvents(EventsConnector):
    """The events connector with an output that fails the first ``failures`` writes."""

    def __init__(self, failures: int) -> None:
        super().__init__({"output": "-"})
        self.failures = failures
        self.written: list[tuple[str, str]] = []

    def apply(self, action: Action) -> Outcome:
        if self.failures > 0:
            self.failures -= 1
            return Outcome.transient(action, "disk full")
        self.written.append((action.kind, action.key))
        return Outcome.done(action)


def _cycle(store: Store, connector: Any, now: float, fail: bool = False, **options: Any) -> Any:
    return run_cycle(CapturedSlurm(fail), store, {"events": connector}, CycleOptions(**options),
                     now=now)


def test_a_transient_failure_waits_in_the_outbox_and_is_retried_once() -> None:
    store = Store.memory(rand=lambda: 0.0)
    flaky = FlakyEvents(failures=1)
    first = _cycle(store, flaky, now=TS0)
    assert first.exit_code == 1
    failed = [o for o in first.outcomes if o.status is Status.TRANSIENT]
    # The start that failed, and its job's stop, which waits for it.
    assert len({o.action.key for o in failed}) == 1 and len(failed) in (1, 2)
    assert store.outbox_stats(connector="events").depth == len(failed)
    # Durably queued counts: the watermark moved with the batch.
    assert store.get_watermark(connector="events") == int(TS0) + 1
    again = _cycle(store, flaky, now=TS0 + 10)
    assert again.planned == []  # nothing new; the queued action is not planned twice
    assert again.outcomes == []  # and not due yet: the first retry waits 30 s
    assert store.outbox_stats(connector="events").depth == len(failed)
    later = _cycle(store, flaky, now=TS2)
    assert [o.status for o in later.outcomes] == [Status.DONE] * len(failed)
    assert store.outbox_stats(connector="events").depth == 0
    assert len(flaky.written) == len(set(flaky.written)), "an event was written twice"
    assert len(flaky.written) == len(first.planned)


def test_limit_defers_and_holds_the_watermark() -> None:
    store = Store.memory()
    connector = FlakyEvents(failures=0)
    report = _cycle(store, connector, now=TS0, scope=Scope(limit=2))
    assert len(report.deferred) > 0 and len(report.planned) <= 4
    assert store.get_watermark(connector="events") is None
    rest = _cycle(store, connector, now=TS1)
    assert store.get_watermark(connector="events") == int(TS1) + 1
    assert len(connector.written) == len(set(connector.written)) == len(report.planned) + len(
        rest.planned)


def test_jobid_run_never_moves_the_watermark() -> None:
    store = Store.memory()
    _cycle(store, FlakyEvents(0), now=TS0, scope=Scope(job_ids=(15,)))
    assert store.get_watermark(connector="events") is None


def test_next_window_starts_at_the_watermark_less_the_overlap() -> None:
    store = Store.memory()
    _cycle(store, FlakyEvents(0), now=TS0)
    reader = CapturedSlurm()
    run_cycle(reader, store, {"events": FlakyEvents(0)}, CycleOptions(sacct_overlap=60), now=TS1)
    assert reader.windows == [SacctWindow(int(TS0) + 1 - 60, int(TS1) + 1)]


def test_failing_slurm_stops_nothing_and_keeps_the_watermark() -> None:
    store = Store.memory()
    report = _cycle(store, FlakyEvents(0), now=TS0, fail=True)
    assert report.exit_code == 3 and report.outcomes == [] and len(report.slurm_errors) == 2
    assert store.get_watermark(connector="events") is None


def test_dry_run_plans_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store.open(str(path)).close()
    before = path.read_bytes()
    connector = FlakyEvents(0)
    with Store.open(str(path), read_only=True) as store:
        report = _cycle(store, connector, now=TS0, dry_run=True)
    assert report.planned and report.outcomes == [] and connector.written == []
    assert path.read_bytes() == before


def test_queued_retries_follow_the_runs_direction_and_jobids() -> None:
    store = Store.memory(rand=lambda: 0.0)
    flaky = FlakyEvents(failures=1)
    first = _cycle(store, flaky, now=TS0)
    queued = [o.action for o in first.outcomes if o.status is Status.TRANSIENT]
    key = queued[0].key
    job_id = int(key.split("/")[1])
    stop_only = _cycle(store, flaky, now=TS2, direction=Direction.STOP)
    # A queued stop never goes before its queued start, even in a stop-only run.
    assert all(o.status is Status.TRANSIENT for o in stop_only.outcomes)
    assert flaky.written == [w for w in flaky.written if w[1] != key]
    assert _cycle(store, flaky, now=TS2, scope=Scope(job_ids=(job_id + 1000,))).outcomes == []
    retried = _cycle(store, flaky, now=TS2 + 4000, scope=Scope(job_ids=(job_id,)))
    assert {(o.action.key, o.status) for o in retried.outcomes} == {(key, Status.DONE)}
    assert [k for k, w in flaky.written if w == key] == [a.kind for a in queued]


def test_a_stop_never_overtakes_its_failed_start() -> None:
    store = Store.memory(rand=lambda: 0.0)
    flaky = FlakyEvents(failures=1)
    report = _cycle(store, flaky, now=TS0, scope=Scope(job_ids=(15,)))  # fail3: start and stop
    assert [(o.action.kind, o.status) for o in report.outcomes] == [
        ("start", Status.TRANSIENT), ("stop", Status.TRANSIENT)]
    assert "waits for its start" in report.outcomes[1].detail
    assert flaky.written == []
    later = _cycle(store, flaky, now=TS2, scope=Scope(job_ids=(15,)))
    assert [k for k, _ in flaky.written] == ["start", "stop"]
    assert all(o.status is Status.DONE for o in later.outcomes)


class SlowEvents(EventsConnector):
    """Counts how many applies overlap, to see the connector's concurrency bound."""

    def __init__(self, concurrency: int) -> None:
        super().__init__({"output": "-", "concurrency": concurrency})
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def apply(self, action: Action) -> Outcome:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        return Outcome.done(action)


def test_each_connector_applies_at_most_its_own_concurrency_at_once() -> None:
    for bound in (1, 3):
        connector = SlowEvents(bound)
        report = _cycle(Store.memory(), connector, TS0)
        assert len(report.outcomes) > bound
        assert connector.most == bound


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def begin(self, connector: str, total: int) -> None:
        self.events.append(("begin", total))

    def advance(self, outcome: Outcome) -> None:
        self.events.append(("advance", outcome.action.key))

    def end(self, connector: str) -> None:
        self.events.append(("end", connector))


def test_progress_is_told_of_every_applied_action() -> None:
    recorder = Recorder()
    report = run_cycle(CapturedSlurm(), Store.memory(), {"events": FlakyEvents(0)},
                       CycleOptions(), now=TS0, progress=recorder)
    assert recorder.events[0] == ("begin", len(report.outcomes))
    # applied in parallel, so in any order, but each exactly once
    advanced = sorted((str(k) for e, k in recorder.events if e == "advance"))
    assert advanced == sorted(o.action.key for o in report.outcomes)
    assert recorder.events[-1] == ("end", "events")


class Refusing(EventsConnector):
    """A service that refuses every start payload for good."""

    def __init__(self) -> None:
        super().__init__({"output": "-"})
        self.sent = 0

    def apply(self, action: Action) -> Outcome:
        self.sent += 1
        if action.kind == "start":
            return Outcome.permanent(action, "HTTP 400: bad payload")
        return Outcome.done(action)


def test_a_permanent_failure_is_recorded_once_not_resent_every_cycle() -> None:
    store = Store.memory()
    connector = Refusing()
    first = _cycle(store, connector, TS0)
    refused = [o for o in first.outcomes if o.status is Status.PERMANENT]
    assert refused and first.exit_code == 1
    sent = connector.sent
    second = _cycle(store, connector, TS1)
    assert not [a for a in second.planned if a.kind == "start"]
    assert connector.sent == sent + len(second.planned)
    assert store.failed(connector="events", kind="start") == {
        o.action.key for o in refused}


class Batched(EventsConnector):
    """Takes every start in one call, as one sbatch for many jobs would."""

    kinds = (Kind("start", Direction.START, timed=True, batched=True), STOP_KIND)

    def __init__(self) -> None:
        super().__init__({"output": "-"})
        self.calls: list[int] = []

    def apply_many(self, actions: Any) -> list[Outcome]:
        self.calls.append(len(actions))
        return [Outcome.done(a) for a in actions]

    def apply(self, action: Action) -> Outcome:
        return Outcome.done(action)


def test_batched_kinds_go_to_apply_many_once_and_times_reach_the_next_plan() -> None:
    store = Store.memory()
    connector = Batched()
    report = _cycle(store, connector, TS0)
    starts = [o for o in report.outcomes if o.action.kind == "start"]
    assert connector.calls == [len(starts)] and len(starts) > 1
    snapshot = _snapshot_of(store, connector, {o.action.key for o in starts})
    assert snapshot.since("start", starts[0].action.key) == TS0
    assert snapshot.since("stop", starts[0].action.key) is None


def _snapshot_of(store: Store, connector: Any, keys: set[str]) -> Any:
    from slurm_sync.engine import _snapshot, run_key

    ids = {r[0] for k in keys if (r := run_key(k)) is not None}
    return _snapshot(store, "events", connector.kind_table(), ids)
