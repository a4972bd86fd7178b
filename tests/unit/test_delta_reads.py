"""Delta reads (issue 14): a cycle lists jobs with squeue's plain listing and fetches the full
record only of the runs a connector has not handled yet, so a steady cycle never asks for the
full records of jobs already synced."""

from __future__ import annotations

from collections.abc import Sequence

from slurm_sync.connector import SlurmNeeds, Snapshot, delivery_key
from slurm_sync.connectors.events import EventsConnector
from slurm_sync.engine import CycleOptions, detail_ids, lists_first, run_cycle
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.parse import ParseResult
from slurm_sync.slurm.query import JobFilter, SacctWindow
from slurm_sync.store import Store
from tests.standin_listing import as_listed
from tests.unit.test_cycle_faults import T0, Recorder, Timeline, _result

RUNNING = JobFilter(states=("R",))
KINDS = {"events": EventsConnector({"output": "-"}).kind_table()}


def _job(job_id: int, start: int | None, state: JobState = JobState.RUNNING,
         end: int | None = None) -> Job:
    return as_listed(Job(job_id=job_id, cluster="c", start_time=start, end_time=end,
                         state=state, hosts=("n1",)))


def test_a_cycle_lists_first_only_when_a_connector_wants_new_runs_only() -> None:
    new = SlurmNeeds(squeue=RUNNING, sacct=True, detail="new")
    everything = SlurmNeeds(squeue=RUNNING, sacct=True)
    named = SlurmNeeds(squeue=JobFilter(states=("PD", "R"), names=("buildkite",)))
    assert lists_first([new]) and lists_first([new, named])
    assert not lists_first([new, everything])  # the full records of every job are read anyway
    assert not lists_first([named]) and not lists_first([SlurmNeeds(sacct=True)])


def test_only_runs_not_yet_handled_and_open_runs_that_ended_are_fetched() -> None:
    listed = [_job(1, T0), _job(2, T0), _job(3, T0), _job(4, T0), _job(5, None, JobState.PENDING),
              _job(6, T0, JobState.COMPLETED, T0 + 9), _job(7, T0, JobState.COMPLETED, T0 + 9)]
    key = {j.job_id: delivery_key(j) for j in listed}
    snapshot = Snapshot(
        delivered={"start": frozenset({key[1], key[6], key[7]}), "stop": frozenset({key[7]})},
        queued={"start": frozenset({key[2]})},
        failed={"start": frozenset({key[3]})})
    needs = {"events": SlurmNeeds(squeue=JobFilter(states=("R", "CD")), sacct=True,
                                  detail="new")}
    # 4 is new; 6 is open and squeue says it ended; 1 runs (handled), 2 is queued, 3 refused,
    # 5 pending (nothing to open), 7 stopped already
    assert detail_ids(listed, needs, {"events": snapshot}, KINDS) == {4, 6}


def test_a_connector_that_wants_every_full_record_gets_its_own_jobs_fetched() -> None:
    listed = [_job(1, T0), _job(2, None, JobState.PENDING)]
    needs = {"events": SlurmNeeds(squeue=JobFilter(states=("PD", "R")), detail="all")}
    assert detail_ids(listed, needs, {"events": Snapshot()}, KINDS) == {1, 2}


class Counting(Timeline):
    """The timeline, counting what each cycle asked: listings, and full records by job id."""

    def __init__(self, runs: Sequence[tuple[int, int, int | None]]) -> None:
        super().__init__(runs)
        self.listings = 0
        self.full: list[tuple[int, ...]] = []

    def squeue_listing(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        self.listings += 1
        answer = super().squeue(job_filter)
        return _result([as_listed(j) for j in answer.jobs])

    def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        self.full.append(job_filter.job_ids)
        return super().squeue(job_filter)

    def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        return super().sacct(window, job_filter)


def test_a_steady_cycle_reads_no_full_record_and_a_new_job_only_its_own() -> None:
    slurm = Counting([(1, T0 + 5, None), (2, T0 + 6, None), (3, T0 + 70, None)])
    store = Store.memory()
    sink = Recorder()
    slurm.now = T0 + 10
    run_cycle(slurm, store, {"events": sink}, CycleOptions(), now=float(slurm.now))
    assert slurm.full == [(1, 2)] and sink.written == [
        ("start", f"c/1/{T0 + 5}"), ("start", f"c/2/{T0 + 6}")]
    slurm.now = T0 + 40  # nothing new: the listing alone
    run_cycle(slurm, store, {"events": sink}, CycleOptions(), now=float(slurm.now))
    assert slurm.full == [(1, 2)] and slurm.listings == 2
    slurm.now = T0 + 80  # job 3 started: its full record only
    run_cycle(slurm, store, {"events": sink}, CycleOptions(), now=float(slurm.now))
    assert slurm.full == [(1, 2), (3,)] and sink.written[-1] == ("start", f"c/3/{T0 + 70}")


def test_a_failed_fetch_of_full_records_is_a_failed_squeue() -> None:
    """The cycle then sees no active job (as when squeue fails): nothing is planned from the
    listing, the exit code says Slurm failed, the watermark stays."""
    class Failing(Counting):
        def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
            if job_filter.job_ids:
                self.failing.add("squeue")
            return super().squeue(job_filter)

    slurm = Failing([(1, T0 + 5, None)])
    store = Store.memory()
    sink = Recorder()
    slurm.now = T0 + 10
    report = run_cycle(slurm, store, {"events": sink}, CycleOptions(), now=float(slurm.now))
    assert report.slurm_errors and report.exit_code == 3
    assert store.get_watermark(connector="events") is None and slurm.full == [(1,)]


def test_the_events_sink_never_writes_a_start_from_a_listed_record() -> None:
    from slurm_sync.connector import Direction, Scope, View

    listed = _job(1, T0)
    plan = EventsConnector({"output": "-"}).plan(
        View(now=T0 + 10, active=(listed,), squeue_ok=True, sacct_ok=True), Snapshot(),
        Direction.BOTH, Scope())
    assert plan == []
