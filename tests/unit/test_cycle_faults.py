"""run_cycle under faults: stops that recover after an outage, a start that waited in the outbox,
queued retries under the guard and --limit, one connector's failure, and exit codes that say
what happened. Slurm is a small in-memory timeline that honours sacct's window and -j."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slurm_sync.actions import Action, Outcome
from slurm_sync.connector import Direction, Scope, SlurmNeeds, Snapshot, View
from slurm_sync.connectors.events import EventsConnector
from slurm_sync.engine import EXIT_BEHIND, EXIT_CONNECTOR, EXIT_SLURM, CycleOptions, run_cycle
from slurm_sync.errors import SlurmCommandError
from slurm_sync.slurm.model import Job, JobState, Skipped
from slurm_sync.slurm.parse import ParseResult, Producer
from slurm_sync.slurm.query import JobFilter, SacctWindow
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner
from slurm_sync.store import Store
from tests.standin_listing import ListsFromSqueue

T0 = 1_795_400_000


def _result(jobs: Sequence[Job]) -> ParseResult:
    return ParseResult(jobs=tuple(jobs), skipped=(), producer=Producer("24.11.0", "v0.0.42"))


class Timeline(ListsFromSqueue, SlurmReader):
    """Runs with start and end times; squeue shows those running at ``now``, sacct those whose
    life overlaps the window (and only the asked job ids). ``failing`` names commands that fail."""

    def __init__(self, runs: Sequence[tuple[int, int, int | None]]) -> None:
        super().__init__(Runner())
        self.runs = runs
        self.now = T0
        self.failing: set[str] = set()
        self.sacct_calls: list[tuple[SacctWindow, tuple[int, ...]]] = []

    def _job(self, job_id: int, start: int, end: int | None, source: str) -> Job:
        ended = end is not None and end <= self.now
        return Job(job_id=job_id, cluster="c", start_time=start, hosts=("n1",),
                   end_time=end if ended else None, source=source,
                   state=JobState.COMPLETED if ended else JobState.RUNNING)

    def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        if "squeue" in self.failing:
            raise SlurmCommandError(["squeue", "--json"], 1, "slurm_load_jobs error")
        return _result([self._job(i, s, e, "squeue") for i, s, e in self.runs
                        if s <= self.now and (e is None or e > self.now)])

    def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        self.sacct_calls.append((window, job_filter.job_ids))
        if "sacct" in self.failing:
            raise SlurmCommandError(["sacct", "--json"], 1, "Problem talking to the database")
        return _result([
            self._job(i, s, e, "sacct") for i, s, e in self.runs
            if s <= self.now and s < window.end and (e is None or e >= window.start)
            and (not job_filter.job_ids or i in job_filter.job_ids)])


class Recorder(EventsConnector):
    """The events sink, remembering what it wrote and failing while ``down``."""

    def __init__(self) -> None:
        super().__init__({"output": "-"})
        self.down = False
        self.written: list[tuple[str, str]] = []

    def apply(self, action: Action) -> Outcome:
        if self.down:
            return Outcome.transient(action, "503 Service Unavailable")
        self.written.append((action.kind, action.key))
        return Outcome.done(action)


def _run(slurm: Timeline, store: Store, connectors: dict[str, Any], **options: Any) -> Any:
    return run_cycle(slurm, store, connectors, CycleOptions(**options), now=float(slurm.now))


def test_a_start_that_waited_in_the_outbox_still_gets_its_stop_after_the_window() -> None:
    """The service is down while a short job runs and ends; by the time its start is delivered
    the job's end lies before the sacct window. The engine looks the tracked run up by job id."""
    slurm = Timeline([(7, T0 + 5, T0 + 20)])
    store = Store.memory(rand=lambda: 0.0)
    sink = Recorder()
    slurm.now = T0 + 10
    _run(slurm, store, {"events": sink})
    sink.down = True
    for minute in range(1, 6):  # the start is sent again and again while the sink is down
        slurm.now = T0 + 10 + 60 * minute
        _run(slurm, store, {"events": sink})
    sink.down = False
    slurm.now = T0 + 4000  # the window now starts long after the job ended
    _run(slurm, store, {"events": sink})
    slurm.now = T0 + 4060
    _run(slurm, store, {"events": sink})
    assert sink.written == [("start", f"c/7/{T0 + 5}"), ("stop", f"c/7/{T0 + 5}")]
    assert any(ids == (7,) for _, ids in slurm.sacct_calls), "no lookup of the tracked run"


def test_a_stop_that_waited_for_its_start_goes_once_the_start_is_delivered() -> None:
    """A stop queued behind its start builds up a backoff of its own while it waits; once the
    start is delivered the stop goes with the next cycle, not when that backoff runs out."""
    slurm = Timeline([(7, T0 + 5, T0 + 20)])
    store = Store.memory(rand=lambda: 0.0)
    sink = Recorder()
    key = f"c/7/{T0 + 5}"
    sink.down = True
    slurm.now = T0 + 10
    _run(slurm, store, {"events": sink})  # the start fails: due again at +40
    slurm.now = T0 + 25
    _run(slurm, store, {"events": sink})  # the job ended: its stop waits for the start (+55)
    assert {e.action.kind for e in store.due(connector="events", now=T0 + 100)} == {
        "start", "stop"}
    sink.down = False
    slurm.now = T0 + 40
    _run(slurm, store, {"events": sink})
    assert sink.written == [("start", key)]
    slurm.now = T0 + 41
    _run(slurm, store, {"events": sink})
    assert sink.written == [("start", key), ("stop", key)]
    assert store.outbox_stats(connector="events").depth == 0


class LaggingSacct(Timeline):
    """squeue keeps ended jobs (MinJobAge) and says so; sacct's window answer leaves them out
    (its lag outlasted the window's overlap), its per-job lookup has them."""

    def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        return _result([self._job(i, s, e, "squeue") for i, s, e in self.runs
                        if s <= self.now])

    def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        answer = super().sacct(window, job_filter)
        if job_filter.job_ids:
            return answer
        return _result([j for j in answer.jobs if not j.state.finished])


def test_ends_only_squeue_still_lists_are_confirmed_by_a_lookup_not_held_for_min_job_age(
) -> None:
    """All twenty tracked jobs end together; sacct's window misses their ends. The stops are
    more than the share guard lets through unconfirmed, so the engine asks sacct for those runs
    by id at once, instead of waiting until squeue forgets them; meanwhile they count as ended
    and not stopped."""
    slurm = LaggingSacct([(i, T0, T0 + 100) for i in range(1, 21)])
    store = Store.memory()
    sink = Recorder()
    slurm.now = T0 + 10
    _run(slurm, store, {"events": sink})
    sink.down = True
    slurm.now = T0 + 110
    report = _run(slurm, store, {"events": sink})
    assert report.refused == [] and report.lag["events"].ended_unstopped == 20
    assert any(ids == tuple(range(1, 21)) for _, ids in slurm.sacct_calls), "no lookup"
    sink.down = False
    slurm.now = T0 + 170
    report = _run(slurm, store, {"events": sink})
    assert report.refused == [] and report.exit_code == 0
    assert sorted(k for kind, k in sink.written if kind == "stop") == [
        f"c/{i}/{T0}" for i in sorted(range(1, 21), key=str)]


def test_after_a_syncer_outage_a_confirmed_backlog_is_stopped_without_force() -> None:
    """90 jobs tracked, the syncer down for an hour, 80 of them ended meanwhile: the catch-up
    cycle stops all 80 (sacct confirms each run's end) and nothing is left behind."""
    runs = [(i, T0, T0 + 100 if i < 80 else None) for i in range(1, 91)]
    slurm = Timeline(runs)
    store = Store.memory()
    sink = Recorder()
    slurm.now = T0 + 10
    _run(slurm, store, {"events": sink})
    slurm.now = T0 + 3600
    report = _run(slurm, store, {"events": sink})
    assert report.refused == [] and report.exit_code == 0
    assert sum(kind == "stop" for kind, _ in sink.written) == 79
    assert report.lag["events"].ended_unstopped == 0


def test_a_failed_squeue_exits_3_whatever_else_went_through() -> None:
    slurm = Timeline([(1, T0, None)])
    slurm.failing = {"squeue"}
    store = Store.memory()
    sink = Recorder()
    slurm.now = T0 + 10
    report = _run(slurm, store, {"events": sink})
    assert sink.written, "sacct's start went through"
    assert report.exit_code == EXIT_SLURM


def test_queued_stops_go_through_the_guard_and_the_limit() -> None:
    """Five stops wait in the outbox; Slurm fails next cycle: none is sent. Then --limit 1
    sends one."""
    slurm = Timeline([(i, T0, T0 + 20) for i in range(1, 6)])
    store = Store.memory(rand=lambda: 0.0)
    sink = Recorder()
    slurm.now = T0 + 10
    _run(slurm, store, {"events": sink})
    sink.down = True
    slurm.now = T0 + 30
    _run(slurm, store, {"events": sink})
    assert store.outbox_stats(connector="events").depth == 5
    sink.down = False
    slurm.failing = {"squeue"}
    slurm.now = T0 + 3000
    report = _run(slurm, store, {"events": sink})
    assert [k for k, _ in sink.written] == ["start"] * 5 and report.refused
    slurm.failing = set()
    report = _run(slurm, store, {"events": sink}, scope=Scope(limit=1))
    assert [k for k, _ in sink.written].count("stop") == 1
    assert [a.kind for a in report.retried] == ["stop"] and len(report.deferred) == 4
    assert store.outbox_stats(connector="events").depth == 4


class Broken(EventsConnector):
    def plan(self, view: View, snapshot: Snapshot, direction: Direction,
             scope: Scope, observed: Any = None) -> list[Action]:
        raise KeyError("a bug")


def test_one_connectors_failure_leaves_the_others_to_run_and_says_so() -> None:
    slurm = Timeline([(1, T0, None)])
    store = Store.memory()
    sink = Recorder()
    slurm.now = T0 + 10
    report = _run(slurm, store, {"broken": Broken({"output": "-"}), "events": sink})
    assert sink.written == [("start", f"c/1/{T0}")]
    assert report.exit_code == EXIT_CONNECTOR
    assert report.connector_errors == ["broken: cycle failed: KeyError: 'a bug'"]
    assert store.get_watermark(connector="events") is not None


class Halting(Recorder):
    def needs(self) -> SlurmNeeds:
        return SlurmNeeds(sacct=True)

    def apply(self, action: Action) -> Outcome:
        self.halted = "cc-backend refuses the payload's schema: set api_version to 1.4"
        return Outcome.transient(action, "400")


def test_a_halted_connector_keeps_its_actions_and_its_watermark() -> None:
    slurm = Timeline([(1, T0, None)])
    store = Store.memory()
    slurm.now = T0 + 10
    report = _run(slurm, store, {"events": Halting()})
    assert report.exit_code == EXIT_CONNECTOR and "api_version" in report.connector_errors[0]
    assert store.outbox_stats(connector="events").depth == 1
    assert store.get_watermark(connector="events") is None


def test_a_connector_behind_more_than_max_lag_turns_the_exit_code() -> None:
    slurm = Timeline([(1, T0, T0 + 20)])
    store = Store.memory(rand=lambda: 0.0)
    sink = Recorder()
    slurm.now = T0 + 10
    _run(slurm, store, {"events": sink})
    sink.down = True
    for step in range(1, 4):
        slurm.now = T0 + 10 + 600 * step
        report = _run(slurm, store, {"events": sink}, max_lag=900.0)
    assert report.exit_code == EXIT_BEHIND, report.behind
    assert "not stopped" in report.behind[0] and "outbox" in report.behind[0]
    lag = store.lag(connector="events")
    assert lag is not None and lag.ended_unstopped == 1 and lag.oldest_end == T0 + 20


class OneBadRecord(Timeline):
    def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        good = super().squeue(job_filter)
        return ParseResult(jobs=good.jobs, producer=good.producer,
                           skipped=(Skipped(3, 42, "job_resources: node index outside"),))


def test_a_cycle_says_which_slurm_records_it_skipped_and_why(tmp_path: Path) -> None:
    slurm = OneBadRecord([(1, T0, None)])
    slurm.now = T0 + 10
    with Store.open(str(tmp_path / "state.db")) as store:
        report = _run(slurm, store, {"events": Recorder()})
        store.record_run(started=T0, ended=T0 + 1, exit_code=report.exit_code,
                         skipped=len(report.skipped))
        last = store.last_run()
    assert report.skipped == ["squeue record 3 (job 42): job_resources: node index outside"]
    assert last is not None and last.skipped == 1


def test_a_failed_squeue_or_an_empty_sacct_holds_the_watermark() -> None:
    """The chaos suite's loss: a requeued job's first run ended while squeue failed; the
    cycle moved the watermark past it, and no later window held it again."""
    slurm = Timeline([(1, T0 - 7200, None)])
    store = Store.memory()
    slurm.now = T0
    _run(slurm, store, {"events": Recorder()})
    mark = store.get_watermark(connector="events")
    slurm.failing = {"squeue"}
    slurm.now = T0 + 60
    _run(slurm, store, {"events": Recorder()})
    assert store.get_watermark(connector="events") == mark
    slurm.failing = set()

    class EmptySacct(Timeline):
        def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
            return _result([])

    empty = EmptySacct(slurm.runs)
    empty.now = T0 + 120
    _run(empty, store, {"events": Recorder()})
    assert store.get_watermark(connector="events") == mark
    slurm.now = T0 + 180
    _run(slurm, store, {"events": Recorder()})
    assert store.get_watermark(connector="events") == T0 + 181


def test_an_empty_sacct_holds_the_watermark_while_squeue_shows_a_run_in_the_window() -> None:
    """Seed 2 of the long chaos run: the requeued job's later run is in squeue (ended, within
    MinJobAge), it started inside the window, and sacct answered nothing: the watermark must
    stay, or the earlier run, in sacct only, falls out of every later window."""

    class EmptySacct(Timeline):
        def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
            return _result([])

        def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
            return _result([self._job(i, s, e, "squeue") for i, s, e in self.runs
                            if s <= self.now])

    slurm = Timeline([(1, T0 + 30, T0 + 40), (2, T0 + 45, T0 + 50)])
    store = Store.memory()
    slurm.now = T0
    _run(slurm, store, {"events": Recorder()})
    mark = store.get_watermark(connector="events")
    empty = EmptySacct(slurm.runs)
    empty.now = T0 + 60
    _run(empty, store, {"events": Recorder()})
    assert store.get_watermark(connector="events") == mark


def test_an_empty_sacct_window_holds_the_watermark_though_the_lookup_answers() -> None:
    """Seed 2 of the long chaos run, again: the window's sacct came back empty, but the same
    cycle's lookup of a tracked run by job id found it. The lookup's records are not the
    window's answer: the watermark must stay, or the requeued job's earlier run is never seen."""

    class EmptyWindow(Timeline):
        def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
            if not job_filter.job_ids:
                self.sacct_calls.append((window, ()))
                return _result([])
            return super().sacct(window, job_filter)

        def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
            return _result([self._job(i, s, e, "squeue") for i, s, e in self.runs
                            if s <= self.now])

    runs = [(3, T0 + 5, T0 + 20), (1, T0 + 30, T0 + 40), (2, T0 + 45, T0 + 50)]
    slurm = Timeline(runs)
    store = Store.memory()
    slurm.now = T0 + 10
    _run(slurm, store, {"events": Recorder()})  # job 3's start is delivered: it is tracked
    mark = store.get_watermark(connector="events")
    empty = EmptyWindow(runs)
    empty.now = T0 + 60
    _run(empty, store, {"events": Recorder()})
    assert any(ids == (3,) for _, ids in empty.sacct_calls), "the tracked run was not looked up"
    assert store.get_watermark(connector="events") == mark


class Slurmctld(Timeline):
    """As ``Timeline``, with squeue as slurmctld answers it: jobs running at ``now`` and jobs
    that ended at most ``MinJobAge`` (300 s) before it, of the asked states; sacct answers the
    window's states (running runs only when asked for) and records them."""

    listed_min_job_age = 300

    def __init__(self, runs: Sequence[tuple[int, int, int | None]]) -> None:
        super().__init__(runs)
        self.sacct_states: list[tuple[str, ...]] = []

    def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        age = self.listed_min_job_age or 0
        jobs = [self._job(i, s, e, "squeue") for i, s, e in self.runs
                if s <= self.now and (e is None or e > self.now - age)]
        return _result([j for j in jobs if job_filter.matches(j)])

    def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        self.sacct_states.append(job_filter.states)
        answer = super().sacct(window, job_filter)
        return _result([j for j in answer.jobs if j.state in job_filter.wanted_states()])


def test_a_steady_window_asks_sacct_for_ended_runs_only() -> None:
    """Issue 14: a cycle whose window fits in MinJobAge does not make sacct list every running
    job (1,000 running: 4.8 MB of JSON each cycle); it asks for ended runs, and the watermark
    moves on an empty answer while nothing ended. The first run's hour does not fit: it asks
    for running runs too."""
    slurm = Slurmctld([(1, T0 - 100, None), (2, T0 + 10, None)])
    store = Store.memory()
    _run(slurm, store, {"events": Recorder()})
    assert "R" in slurm.sacct_states[-1]  # the first run's window: an hour back
    slurm.now = T0 + 60
    _run(slurm, store, {"events": Recorder()})
    assert "R" not in slurm.sacct_states[-1] and "CD" in slurm.sacct_states[-1]
    assert store.get_watermark(connector="events") == T0 + 61


def test_an_empty_ends_only_window_holds_the_watermark_while_squeue_lists_an_end_in_it() -> None:
    """An ends-only window that comes back empty while squeue still lists a job that ended in
    it (within MinJobAge) is an answer that lies or lags: the watermark stays, and the run
    sacct should have listed (job 2, started and ended between two cycles) is stopped once
    sacct answers."""

    class Lying(Slurmctld):
        def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
            self.sacct_states.append(job_filter.states)
            return _result([])

    runs = [(1, T0 - 100, None), (2, T0 + 20, T0 + 40)]
    slurm = Slurmctld(runs)
    store = Store.memory()
    _run(slurm, store, {"events": Recorder()})
    mark = store.get_watermark(connector="events")
    lying = Lying(runs)
    lying.now = T0 + 60
    _run(lying, store, {"events": Recorder()})
    assert "R" not in lying.sacct_states[-1]
    assert store.get_watermark(connector="events") == mark
    slurm.now = T0 + 120
    recorder = Recorder()
    _run(slurm, store, {"events": recorder})
    assert ("stop", f"c/2/{T0 + 20}") in recorder.written
    assert store.get_watermark(connector="events") == T0 + 121


def test_a_window_longer_than_min_job_age_asks_for_running_runs_too() -> None:
    """After a stop longer than MinJobAge less the margin, squeue no longer lists every end in
    the window: it asks for running runs again, and an empty answer is checked against them."""
    slurm = Slurmctld([(1, T0 - 100, None)])
    slurm.listed_min_job_age = 120
    store = Store.memory()
    _run(slurm, store, {"events": Recorder()})
    slurm.now = T0 + 60  # window: 60 s overlap + 60 s + 1 + 10 margin > 120
    _run(slurm, store, {"events": Recorder()})
    assert "R" in slurm.sacct_states[-1]
    slurm.listed_min_job_age = None  # MinJobAge unknown
    slurm.now = T0 + 70
    _run(slurm, store, {"events": Recorder()})
    assert "R" in slurm.sacct_states[-1]
