"""The ClusterCockpit connector and cc-backend's one-record-per-job-id rule, over real HTTP
against the cc-backend emulator: a requeued job's runs go out in order, one at a time; a 422 is
resolved by asking cc-backend which run it holds; the API version is found when it is not
configured; a payload whose schema cc-backend refuses halts the connector instead of refusing
jobs for good; refused actions can be sent again."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.actions import Action, Status
from slurm_sync.config import load_config
from slurm_sync.connector import (
    Direction,
    Scope,
    SlurmContext,
    Snapshot,
    View,
    delivery_key,
    discover,
)
from slurm_sync.connectors.clustercockpit import ClusterCockpitConnector, for_version
from slurm_sync.engine import CycleOptions, run_cycle
from slurm_sync.slurm.model import Job, JobState, NodeAllocation
from slurm_sync.slurm.parse import ParseResult
from slurm_sync.slurm.query import JobFilter, SacctWindow
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner
from slurm_sync.store import Store
from tests.emulators.base import Reply, Request
from tests.emulators.ccbackend import CCBackend
from tests.standin_listing import ListsFromSqueue

TOKEN = "jwt-for-tests"
CLUSTERS = {"lab": {"subclusters": {"main": ["n1", "n2"]}}}
T0 = 1_795_000_000  # the first run of the requeued job
NOW = float(T0 + 3600)
JOB = 500


class Backend(CCBackend):
    """The emulator, with start_job answering 503 for chosen start times and the job list
    failing on demand (cc-backend overloaded for those requests only)."""

    def __init__(self, version: str) -> None:
        # 1.5 commits its job_cache at the next request, as if commit-job-worker had just run:
        # its duplicate rule then sees every run, as 1.4's does.
        super().__init__(version=version, clusters=CLUSTERS, tokens={TOKEN}, commit_interval=0)
        self.fail_starts: set[int] = set()
        self.fail_list = False
        self.bodies: list[dict[str, Any]] = []

    def start_job(self, request: Request) -> Reply:
        body = json.loads(request.body)
        self.bodies.append(body)
        if body.get("startTime") in self.fail_starts:
            return self._error(503, "overloaded")
        return super().start_job(request)

    def list_jobs(self, request: Request) -> Reply:
        if self.fail_list:
            return self._error(500, "database is locked")
        return super().list_jobs(request)


@pytest.fixture(params=["1.4.4", "1.5.4"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    with Backend(request.param) as emu:
        yield emu  # type: ignore[misc]


def _token(tmp_path: Path) -> Path:
    token = tmp_path / "cc-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return token


def _connector(tmp_path: Path, emu: CCBackend, version: str | None = "same",
               **extra: Any) -> ClusterCockpitConnector:
    settings: dict[str, Any] = {"url": emu.url, "token": {"file": str(_token(tmp_path))},
                                "cluster": "lab", "retries": 0, "job_script": False, **extra}
    if version is not None:
        settings["api_version"] = emu.version[:3] if version == "same" else version
    connector = ClusterCockpitConnector(settings)
    connector.bind(SlurmContext(reader=Jobs(), cluster="lab"))
    return connector


def _run(start: int, *, end: int | None = None, job_id: int = JOB, host: str = "n1",
         state: JobState | None = None) -> Job:
    ended = end is not None
    return Job(
        job_id=job_id, name="requeued", user="ada", account="proj", partition="batch",
        cluster="lab", state=state or (JobState.REQUEUED if ended else JobState.RUNNING),
        start_time=start, end_time=end, submit_time=T0 - 100, time_limit=60, cpus=2,
        hosts=(host,), nodelist=host,
        allocations=(NodeAllocation(hostname=host, cpu_ids=(0, 1)),),
        source="sacct" if ended else "squeue",
    )


class Jobs(ListsFromSqueue, SlurmReader):
    """squeue and sacct answered from a list of jobs."""

    def __init__(self, active: Sequence[Job] = (), ended: Sequence[Job] = ()) -> None:
        super().__init__(Runner(), state_save_location="/nonexistent")
        self.active, self.ended = tuple(active), tuple(ended)

    def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        return ParseResult([j for j in self.active if job_filter.matches(j)], [], None)

    def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        return ParseResult([j for j in self.ended if job_filter.matches(j)], [], None)


def _view(active: Sequence[Job] = (), ended: Sequence[Job] = ()) -> View:
    return View(now=NOW, active=tuple(active), ended=tuple(ended),
                window=SacctWindow(int(NOW) - 7200, int(NOW) + 1), squeue_ok=True, sacct_ok=True)


def _starts(connector: ClusterCockpitConnector, view: View,
            snapshot: Snapshot | None = None) -> list[Action]:
    snapshot = snapshot or Snapshot(watermark=NOW - 60)
    observed = connector.observe(view, snapshot)
    planned = connector.plan(view, snapshot, Direction.START, Scope(), observed=observed)
    return [a for a in planned.actions if a.kind == "start"]


def _held(emu: CCBackend, job_id: int = JOB) -> list[tuple[int, str]]:
    emu.commit()
    return sorted((j["startTime"], j["jobState"]) for j in emu.job(job_id))


def _insert(emu: CCBackend, start: int, *, job_id: int = JOB, state: str = "running") -> None:
    """A record put into cc-backend by someone else (another sync tool, an earlier install)."""
    with emu.lock:
        row = {"id": 1000 + len(emu.jobs), "jobId": job_id, "cluster": "lab", "user": "ada",
               "project": "proj", "subCluster": "main", "partition": "batch",
               "numNodes": 1, "numHwthreads": 2, "numAcc": 0, "startTime": start,
               "jobState": state, "duration": 0, "walltime": 3600, "monitoringStatus": 1,
               "resources": [{"hostname": "n1"}], "metaData": {}, "tags": None,
               "exclusive": 1, "shared": "none", "arrayJobId": 0, "smt": 0}
        emu.jobs.append(row)


# --- 1. runs of one job id go out in order, one at a time ---------------------------------------


def test_the_connector_applies_starts_as_one_batch(tmp_path: Path, backend: Backend) -> None:
    connector = _connector(tmp_path, backend)
    assert connector.kind_table()["start"].batched


def test_runs_of_a_requeued_job_go_out_oldest_first(tmp_path: Path, backend: Backend) -> None:
    """Whatever order they come in (an outbox retry after a new start), the earlier run is
    sent first, so cc-backend holds the run that really came first."""
    first, second = _run(T0, end=T0 + 300), _run(T0 + 600)
    connector = _connector(tmp_path, backend)
    starts = _starts(connector, _view([second], [first]))
    assert len(starts) == 2
    outcomes = connector.apply_many(list(reversed(starts)))
    assert [o.action.key for o in outcomes] == [a.key for a in reversed(starts)]
    by_key = {o.action.key: o for o in outcomes}
    assert by_key[delivery_key(first)].status is Status.DONE
    later = by_key[delivery_key(second)]
    # cc-backend holds run T0 (ours, not stopped yet) and refuses any other run within 24 h
    # of it, stopped or not: the later run is refused for good, naming the run that holds it.
    assert later.status is Status.PERMANENT
    assert f"run {T0} of job {JOB} (running, which slurm-sync started)" in later.detail
    assert _held(backend) == [(T0, "running")]


def test_a_later_run_waits_while_the_earlier_one_is_not_delivered(tmp_path: Path,
                                                                   backend: Backend) -> None:
    first, second = _run(T0, end=T0 + 300), _run(T0 + 600)
    connector = _connector(tmp_path, backend)
    starts = _starts(connector, _view([second], [first]))
    backend.fail_starts = {T0}
    outcomes = connector.apply_many(starts)
    assert [o.status for o in outcomes] == [Status.TRANSIENT, Status.TRANSIENT]
    assert outcomes[1].detail == f"waits for run {T0} of job {JOB}"
    assert [b["startTime"] for b in backend.bodies] == [T0]  # the later run was not sent
    assert _held(backend) == []


def test_a_later_run_waits_for_an_earlier_run_queued_in_the_outbox(tmp_path: Path,
                                                                    backend: Backend) -> None:
    """The earlier run's start waits in the outbox (not due yet): a new start of the later
    run must not overtake it."""
    first, second = _run(T0, end=T0 + 300), _run(T0 + 600)
    connector = _connector(tmp_path, backend)
    snapshot = Snapshot(queued={"start": frozenset({delivery_key(first)})}, watermark=NOW - 60)
    starts = _starts(connector, _view([second], [first]), snapshot)
    assert [a.key for a in starts] == [delivery_key(second)]
    (outcome,) = connector.apply_many(starts)
    assert outcome.status is Status.TRANSIENT
    assert outcome.detail.startswith(f"waits for run {T0} of job {JOB}")
    assert backend.bodies == []


def test_a_retry_waits_for_its_earlier_run_until_cc_backend_has_one(tmp_path: Path,
                                                                    backend: Backend) -> None:
    """A start from the outbox carries the earlier runs it waits for in its payload, as planned
    cycles ago: while cc-backend has no run of the job it waits; once it has one (the earlier
    start got through meanwhile), it goes, and its 422 is resolved as any other."""
    first, second = _run(T0, end=T0 + 300), _run(T0 + 600)
    connector = _connector(tmp_path, backend)
    earlier, later = _starts(connector, _view([second], [first]))
    assert later.payload["waits_for"] == [T0] and later.payload["ours"] == []
    (outcome,) = connector.apply_many([later])
    assert outcome.status is Status.TRANSIENT
    assert outcome.detail.startswith(f"waits for run {T0} of job {JOB}")
    assert backend.bodies == []
    assert connector.apply_many([earlier])[0].status is Status.DONE
    backend.commit()
    (again,) = connector.apply_many([later])
    assert again.status is Status.PERMANENT
    assert f"run {T0} of job {JOB} (running, which slurm-sync started)" in again.detail
    assert _held(backend) == [(T0, "running")]


def test_a_retry_whose_earlier_run_was_refused_is_not_held_for_ever(tmp_path: Path,
                                                                    backend: Backend) -> None:
    """The earlier run it waits for was refused for good (cc-backend holds a still earlier run
    of the job): that run decides this start too, so it goes, and is refused naming it."""
    first, second = _run(T0, end=T0 + 300), _run(T0 + 600)
    _insert(backend, T0 - 1000)
    connector = _connector(tmp_path, backend)
    _, later = _starts(connector, _view([second], [first]))
    assert later.payload["waits_for"] == [T0]
    (outcome,) = connector.apply_many([later])
    assert outcome.status is Status.PERMANENT and f"run {T0 - 1000}" in outcome.detail


def test_other_jobs_are_not_held_up_by_a_waiting_run(tmp_path: Path, backend: Backend) -> None:
    first, second, other = _run(T0, end=T0 + 300), _run(T0 + 600), _run(T0 + 5, job_id=501)
    connector = _connector(tmp_path, backend, concurrency=2)
    starts = _starts(connector, _view([second, other], [first]))
    backend.fail_starts = {T0}
    outcomes = {o.action.key: o.status for o in connector.apply_many(starts)}
    assert outcomes[delivery_key(other)] is Status.DONE
    assert outcomes[delivery_key(second)] is Status.TRANSIENT


def test_requeued_job_through_cycles_ends_with_the_right_run_held(tmp_path: Path,
                                                                   backend: Backend) -> None:
    """Cycle 1: the first run fails to get through, the second waits. Cycle 2: both are
    retried; the first goes, the second waits for its stop. Then cc-backend's 24 h rule:
    the second run is refused for good with a reason naming both runs; the first run's record
    is stopped with Slurm's end."""
    first, second = _run(T0, end=T0 + 300), _run(T0 + 600)
    reader = Jobs([second], [first])
    store = Store.memory()
    backend.fail_starts = {T0}
    options = CycleOptions()
    run_cycle(reader, store, {"clustercockpit": _connector(tmp_path, backend)}, options,
              now=NOW)
    backend.fail_starts = set()
    for n in range(1, 6):
        run_cycle(reader, store, {"clustercockpit": _connector(tmp_path, backend)}, options,
                  now=NOW + n * 4000)
    assert _held(backend) == [(T0, "cancelled")]
    (refusal,) = store.refusals(connector="clustercockpit")
    assert refusal.key == delivery_key(second)
    assert str(T0) in refusal.detail["detail"] and str(T0 + 600) in refusal.detail["detail"]
    assert store.outbox_stats(connector="clustercockpit").depth == 0


# --- 2. a 422 is resolved by asking cc-backend which run it holds -------------------------------


def test_422_for_this_very_run_is_already_done(tmp_path: Path, backend: Backend) -> None:
    run = _run(T0)
    connector = _connector(tmp_path, backend)
    (start,) = _starts(connector, _view([run]))
    assert connector.apply_many([start])[0].status is Status.DONE
    backend.commit()
    (again,) = connector.apply_many([start])
    assert again.status is Status.ALREADY_DONE
    lists = [s for s in backend.seen if s.method == "GET"]
    assert lists and all("jobId" not in s.query for s in lists)
    assert lists[0].query["start-time"] == [f"{T0}-{T0}"]


def test_422_for_another_run_nobody_stopped_is_refused_naming_both(tmp_path: Path,
                                                                   backend: Backend) -> None:
    """cc-backend holds a run of this job id that slurm-sync never started (another tool),
    still running there: a refusal for good, and it says which run holds the record."""
    _insert(backend, T0 - 1000)
    connector = _connector(tmp_path, backend)
    (start,) = _starts(connector, _view([_run(T0)]))
    (outcome,) = connector.apply_many([start])
    assert outcome.status is Status.PERMANENT
    assert str(T0 - 1000) in outcome.detail and str(T0) in outcome.detail
    assert "running" in outcome.detail


def test_422_for_our_earlier_run_still_running_there_is_refused_at_once(
        tmp_path: Path, backend: Backend) -> None:
    """Our earlier run's record is still running in cc-backend: waiting for its stop would not
    help (cc-backend refuses any run within 24 h of another), so the later run is refused now,
    from the listing, with the reason, instead of being sent again every cycle."""
    earlier = _run(T0 - 1000, end=T0 - 10)
    _insert(backend, T0 - 1000)
    connector = _connector(tmp_path, backend)
    snapshot = Snapshot(delivered={"start": frozenset({delivery_key(earlier)})},
                        watermark=NOW - 60)
    (start,) = _starts(connector, _view([_run(T0)]), snapshot)
    (outcome,) = connector.apply_many([start])
    assert outcome.status is Status.PERMANENT
    assert f"run {T0 - 1000} of job {JOB} (running, which slurm-sync started)" in outcome.detail


def test_422_for_a_stopped_run_within_24h_is_refused_naming_both(tmp_path: Path,
                                                                  backend: Backend) -> None:
    _insert(backend, T0 - 1000, state="cancelled")
    connector = _connector(tmp_path, backend)
    (start,) = _starts(connector, _view([_run(T0)]))
    (outcome,) = connector.apply_many([start])
    assert outcome.status is Status.PERMANENT
    assert f"run {T0 - 1000}" in outcome.detail and str(T0) in outcome.detail


def test_422_with_a_job_list_that_fails_is_never_guessed(tmp_path: Path,
                                                         backend: Backend) -> None:
    _insert(backend, T0 - 1000, state="cancelled")
    backend.fail_list = True
    connector = _connector(tmp_path, backend)
    (start,) = _starts(connector, _view([_run(T0)]))
    (outcome,) = connector.apply_many([start])
    assert outcome.status is Status.TRANSIENT and "422" in outcome.detail


def test_the_job_list_is_paged_and_filtered_by_job_id(tmp_path: Path, backend: Backend) -> None:
    for n in range(7):
        _insert(backend, T0 - 500 + n, job_id=600 + n)
    _insert(backend, T0 - 2000, state="completed")
    connector = _connector(tmp_path, backend, page_size=3)
    (start,) = _starts(connector, _view([_run(T0)]))
    (outcome,) = connector.apply_many([start])
    assert outcome.status is Status.PERMANENT and f"run {T0 - 2000}" in outcome.detail
    assert max(int(s.query.get("page", ["1"])[0]) for s in backend.seen if s.method == "GET") >= 3


# --- 3. the API version: found when not configured ----------------------------------------------


def test_without_api_version_the_backend_version_is_found(tmp_path: Path,
                                                          backend: Backend) -> None:
    connector = _connector(tmp_path, backend, version=None)
    report = run_cycle(Jobs([_run(T0)], [_run(T0 - 900, end=T0 - 800, job_id=7,
                                              state=JobState.NODE_FAIL)]),
                       Store.memory(), {"clustercockpit": connector}, CycleOptions(), now=NOW)
    assert {o.status for o in report.outcomes} == {Status.DONE}, [
        o.detail for o in report.outcomes]
    assert connector.api_version == backend.version[:3]
    sent = backend.bodies[0]
    if backend.version.startswith("1.4"):
        assert "exclusive" in sent and "shared" not in sent
    else:
        assert "shared" in sent and "exclusive" not in sent
    gets = backend.count("GET", "/api/jobs/")
    connector.apply_many(_starts(connector, _view([_run(T0 + 90000)])))
    assert backend.count("GET", "/api/jobs/") == gets  # found once, then cached


def test_check_finds_the_version_and_names_a_wrong_one(tmp_path: Path,
                                                       backend: Backend) -> None:
    assert _connector(tmp_path, backend, version=None).check() == []
    other = "1.5" if backend.version.startswith("1.4") else "1.4"
    problems = _connector(tmp_path, backend, version=other).check()
    assert len(problems) == 1
    assert f"api_version is {other}" in problems[0] and backend.version[:3] in problems[0]


def test_a_cc_slurm_sync_config_works_against_1_4_with_no_refusal(tmp_path: Path) -> None:
    with Backend("1.4.4") as emu:
        path = tmp_path / "config.json"
        path.write_text(json.dumps({
            "clustername": "lab",
            "slurm": {"state_save_location": str(tmp_path)},
            "cc-backend": {"host": emu.url, "apikey": TOKEN}}))
        path.chmod(0o600)
        registry = discover()
        config = load_config(str(path), {n: dict(c.schema) for n, c in registry.items()},
                             adapters=[c.adapt_config for c in registry.values()])
        settings = dict(config.connectors["clustercockpit"].settings)
        assert "api_version" not in settings
        connector = ClusterCockpitConnector({**settings, "retries": 0})
        connector.bind(SlurmContext(reader=Jobs(), cluster="lab"))
        store = Store.memory()
        report = run_cycle(Jobs([_run(T0)], [_run(T0 - 900, end=T0 - 800, job_id=7)]), store,
                           {"clustercockpit": connector}, CycleOptions(), now=NOW)
        assert report.outcomes and {o.status for o in report.outcomes} == {Status.DONE}
        assert store.refusals(connector="clustercockpit") == ()


def test_for_version_turns_one_schema_into_the_other() -> None:
    body = {"jobId": 1, "shared": "single_user", "submitTime": 5, "requestedMemory": 9}
    assert for_version({"job": body}, "start", "1.4") == {
        "job": {"jobId": 1, "exclusive": 2}}
    assert for_version({"job": {"jobId": 1, "exclusive": 0}}, "start", "1.5") == {
        "job": {"jobId": 1, "shared": "multi_user"}}
    stop = {"jobId": 1, "jobState": "node_fail"}
    assert for_version(stop, "stop", "1.4")["jobState"] == "failed"
    assert for_version(stop, "stop", "1.5") == stop


# --- 4. a payload schema cc-backend refuses halts the connector --------------------------------


def test_a_schema_400_halts_the_connector_and_refuses_no_job(tmp_path: Path) -> None:
    with Backend("1.4.4") as emu:
        runs = [_run(T0 + n, job_id=700 + n) for n in range(5)]
        store = Store.memory()
        wrong = _connector(tmp_path, emu, version="1.5", concurrency=1)
        report = run_cycle(Jobs(runs), store, {"clustercockpit": wrong}, CycleOptions(),
                           now=NOW)
        assert len(report.outcomes) == 5
        assert {o.status for o in report.outcomes} == {Status.TRANSIENT}
        assert len(emu.bodies) == 1  # the rest were not sent
        assert wrong.halted and "api_version" in wrong.halted and "shared" in wrong.halted
        assert report.exit_code == 4
        assert any("api_version" in line for line in report.connector_errors)
        assert store.refusals(connector="clustercockpit") == ()
        assert store.outbox_stats(connector="clustercockpit").depth == 5
        # a stop of this connector is not sent either while it is halted
        stop = wrong.apply(Action("clustercockpit", "stop", "lab/1/1", {
            "jobId": 1, "cluster": "lab", "startTime": 1, "stopTime": 2,
            "jobState": "completed"}))
        assert stop.status is Status.TRANSIENT and emu.count("POST", "/api/jobs/stop_job/") == 0
        # the operator fixes the config: the queued payloads (1.5's form) go in 1.4's
        fixed = _connector(tmp_path, emu, version=None)
        later = run_cycle(Jobs(runs), store, {"clustercockpit": fixed}, CycleOptions(),
                          now=NOW + 4000)
        assert {o.status for o in later.outcomes} == {Status.DONE} and fixed.halted is None
        assert len(emu.all_jobs()) == 5


def test_halted_is_cleared_by_the_next_batch(tmp_path: Path) -> None:
    with Backend("1.4.4") as emu:
        connector = _connector(tmp_path, emu, version="1.5")
        connector.apply_many(_starts(connector, _view([_run(T0)])))
        assert connector.halted
        connector.api_version = connector.configured_version = "1.4"
        outcomes = connector.apply_many(_starts(connector, _view([_run(T0)])))
        assert connector.halted is None and outcomes[0].status is Status.DONE
