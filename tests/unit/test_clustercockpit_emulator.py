"""The ClusterCockpit connector over real HTTP against the cc-backend emulator (1.4.4 and
1.5.4): strict decoding accepts what we send, idempotence, the 1.5 job_cache, stop rules,
reconcile, faults. Slurm's side is the 24.11 lab capture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.actions import Status
from slurm_sync.connector import SlurmContext
from slurm_sync.connectors.clustercockpit import ClusterCockpitConnector
from slurm_sync.engine import CycleOptions, run_cycle
from slurm_sync.slurm.parse import ParseResult, parse_sacct, parse_squeue
from slurm_sync.slurm.query import JobFilter, SacctWindow
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner
from slurm_sync.store import Store
from tests.emulators.base import Faults
from tests.emulators.ccbackend import CCBackend
from tests.standin_listing import ListsFromSqueue

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "slurm" / "24.11"
TOKEN = "jwt-for-tests"
CLUSTERS = {"lab": {"subclusters": {"main": ["lab2411n1"]}}}
NOW = 1795322000.0
BUS = {"0": "00000000:03:00.0", "1": "00000000:04:00.0", "2": "00000000:05:00.0",
       "3": "00000000:06:00.0"}


class Captured(ListsFromSqueue, SlurmReader):
    """squeue and sacct answered from captures; counts lookups."""

    def __init__(self, squeue: str = "squeue-array.json") -> None:
        super().__init__(Runner(), state_save_location="/nonexistent")
        self.squeue_doc = squeue
        self.sacct_calls: list[JobFilter] = []

    def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        result = parse_squeue((FIXTURES / self.squeue_doc).read_bytes())
        return ParseResult([j for j in result.jobs if job_filter.matches(j)], result.skipped,
                           result.producer)

    def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        self.sacct_calls.append(job_filter)
        result = parse_sacct((FIXTURES / "sacct.json").read_bytes())
        return ParseResult([j for j in result.jobs if job_filter.matches(j)], result.skipped,
                           result.producer)

    def batch_script(self, job_id: int) -> str | None:
        return f"#!/bin/sh\n# script of {job_id}\n"


@pytest.fixture(params=["1.4.4", "1.5.4"])
def backend(request: pytest.FixtureRequest) -> Iterator[CCBackend]:
    with CCBackend(version=request.param, clusters=CLUSTERS, tokens={TOKEN}) as emu:
        yield emu  # type: ignore[misc]


def _connector(tmp_path: Path, emu: CCBackend, **extra: Any) -> ClusterCockpitConnector:
    token = tmp_path / "cc-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    connector = ClusterCockpitConnector({
        "url": emu.url, "token": {"file": str(token)}, "cluster": "lab",
        "api_version": emu.version[:3], "accelerators": {"lab": BUS}, "retries": 0, **extra})
    connector.bind(SlurmContext(reader=Captured(), cluster="lab2411"))
    return connector


def _cycle(connector: ClusterCockpitConnector, store: Store, now: float = NOW,
           reader: SlurmReader | None = None, **options: Any) -> Any:
    return run_cycle(reader or Captured(), store, {"clustercockpit": connector},
                     CycleOptions(**options), now=now)


def test_every_run_is_started_once_and_every_end_stopped(tmp_path: Path,
                                                         backend: CCBackend) -> None:
    store = Store.memory()
    report = _cycle(_connector(tmp_path, backend), store)
    assert {o.status for o in report.outcomes} == {Status.DONE}, [
        o.detail for o in report.outcomes if o.status is not Status.DONE]
    backend.commit()
    jobs = {(j["jobId"], j["startTime"]): j for j in backend.all_jobs()}
    # 17 runs started in the window (the pending ones and 'held' never ran); all but the one
    # still running (9, array task) ended, and were stopped with sacct's state and end.
    assert len(jobs) == len(backend.all_jobs())
    fail3 = jobs[(15, 1795321838)]
    assert fail3["jobState"] == "failed" and fail3["duration"] == 1
    gpu1 = jobs[(8, 1795321816)]
    assert gpu1["resources"][0]["accelerators"] == [BUS["0"]]
    assert gpu1["resources"][0]["hwthreads"] == [3]
    assert gpu1["metaData"]["jobScript"].startswith("#!/bin/sh\n# script of 8")
    second = _cycle(_connector(tmp_path, backend), store, now=NOW + 60)
    assert second.planned == [] and len(backend.all_jobs()) == len(jobs)


def test_a_start_cc_backend_already_has_is_recorded_not_repeated(tmp_path: Path,
                                                                 backend: CCBackend) -> None:
    _cycle(_connector(tmp_path, backend), Store.memory(), direction=_start())
    backend.commit()
    before = len(backend.all_jobs())
    # the store is lost, reconcile is off: every start is sent again and answered 422
    report = _cycle(_connector(tmp_path, backend, reconcile="never"), Store.memory(),
                    direction=_start())
    statuses = {o.status for o in report.outcomes}
    assert statuses == {Status.ALREADY_DONE} and len(backend.all_jobs()) == before


def _start() -> Any:
    from slurm_sync.connector import Direction

    return Direction.START


def test_reconcile_adopts_what_cc_backend_runs_and_stops_what_ended(tmp_path: Path,
                                                                    backend: CCBackend) -> None:
    connector = _connector(tmp_path, backend)
    # squeue taken with sacct's capture: the requeued job 20's new run is running in both.
    _cycle(connector, Store.memory(), direction=_start(), reader=Captured("squeue-finished.json"))
    backend.commit()
    starts_before = backend.count("POST", "/api/jobs/start_job/")
    # The store is lost: the first run lists cc-backend's running jobs (paged), adopts them
    # without a second start, and stops those sacct says ended.
    report = _cycle(_connector(tmp_path, backend, page_size=3), Store.memory(), now=NOW + 60,
                    reader=Captured("squeue-finished.json"))
    assert backend.count("POST", "/api/jobs/start_job/") == starts_before
    assert backend.count("GET", "/api/jobs/") >= 3
    # adopted: facts recorded as delivered, nothing sent
    adopted = [f for f in report.facts if "lists it running" in f.detail]
    assert adopted and all(f.status is Status.ALREADY_DONE for f in adopted)
    assert not [o for o in report.outcomes if o.action.kind == "start"]
    running = [j for j in backend.all_jobs() if j["jobState"] == "running"]
    assert [(j["jobId"]) for j in running] == [20]  # the requeued job's new run is still running


def test_a_start_cc_backend_holds_in_its_job_cache_is_there_at_once(tmp_path: Path) -> None:
    """1.5 answers a start it holds uncommitted (its reply was lost, a kill) with a 500 naming
    job_cache's UNIQUE(job_id, cluster, start_time): the run is there. It was retried until the
    commit worker ran, with a backoff that grew meanwhile (seen in the hook's kill test: a job
    left running in cc-backend for minutes); now it is recorded at once, and its stop goes."""
    with CCBackend(version="1.5.4", clusters=CLUSTERS, tokens={TOKEN}) as emu:
        connector = _connector(tmp_path, emu)
        _cycle(connector, Store.memory(), direction=_start())
        # cc-backend has them in job_cache; our store is lost and reconcile cannot see them
        lost = Store.memory()
        report = _cycle(_connector(tmp_path, emu, reconcile="never"), lost, direction=_start())
        assert report.outcomes and {o.status for o in report.outcomes} == {Status.ALREADY_DONE}
        assert all("job_cache" in o.detail for o in report.outcomes)
        assert len(emu.all_jobs()) == len({(j["jobId"], j["startTime"])
                                           for j in emu.all_jobs()})
        # any other 500 is still a failure to retry
        emu.faults = Faults(error_share=1.0)
        again = _cycle(_connector(tmp_path, emu, reconcile="never"), Store.memory(),
                       direction=_start())
        assert {o.status for o in again.outcomes} == {Status.TRANSIENT}


def test_injected_faults_lose_nothing_and_duplicate_nothing(tmp_path: Path,
                                                           backend: CCBackend) -> None:
    store = Store.memory()
    backend.faults = Faults(error_share=0.4, seed=7)
    first = _cycle(_connector(tmp_path, backend), store)
    assert any(o.status is Status.TRANSIENT for o in first.outcomes)
    backend.faults = Faults()
    for n in range(1, 6):  # retries come due with backoff; the next cycles deliver the rest
        _cycle(_connector(tmp_path, backend), store, now=NOW + n * 4000)
    backend.commit()
    clean_store = Store.memory()
    with CCBackend(version=backend.version, clusters=CLUSTERS, tokens={TOKEN}) as clean:
        _cycle(_connector(tmp_path, clean), clean_store)
        clean.commit()
        want = sorted((j["jobId"], j["startTime"], j["jobState"]) for j in clean.all_jobs())
    got = sorted((j["jobId"], j["startTime"], j["jobState"]) for j in backend.all_jobs())
    assert got == want


def test_a_wrong_token_is_a_failure_check_explains(tmp_path: Path, backend: CCBackend) -> None:
    token = tmp_path / "bad"
    token.write_text("nope\n")
    token.chmod(0o600)
    connector = ClusterCockpitConnector({"url": backend.url, "token": {"file": str(token)},
                                         "cluster": "lab", "api_version": backend.version[:3]})
    assert "401" in connector.check()[0]
    report = _cycle(connector, Store.memory(), direction=_start())
    # the payloads are fine: they wait in the outbox until the token is fixed
    assert report.outcomes and all(o.status is Status.TRANSIENT for o in report.outcomes)
    assert "nope" not in " ".join(o.detail for o in report.outcomes)


def test_stop_of_an_unknown_job_is_recorded_not_retried(tmp_path: Path,
                                                        backend: CCBackend) -> None:
    from slurm_sync.actions import Action

    connector = _connector(tmp_path, backend)
    outcome = connector.apply(Action("clustercockpit", "stop", "lab2411/99/1", {
        "jobId": 99, "cluster": "lab", "startTime": 1, "stopTime": 2, "jobState": "completed"}))
    assert outcome.status is Status.ALREADY_DONE
