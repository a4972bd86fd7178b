"""A start is never sent without its allocation: a run only sacct shows running (squeue failed,
or the job started between the two calls) waits for squeue's view of its cores and GPUs."""

from __future__ import annotations

from pathlib import Path

from slurm_sync.errors import SlurmCommandError
from slurm_sync.slurm.parse import ParseResult
from slurm_sync.slurm.query import JobFilter
from slurm_sync.store import Store
from tests.emulators.ccbackend import CCBackend
from tests.unit.test_clustercockpit_emulator import (
    CLUSTERS,
    NOW,
    TOKEN,
    Captured,
    _connector,
    _cycle,
)


class NoSqueue(Captured):
    def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        raise SlurmCommandError(["squeue", "--json"], 1, "slurm_load_jobs error")


def _started(backend: CCBackend) -> set[int]:
    return {j["jobId"] for j in backend.all_jobs()}


def test_runs_sacct_alone_shows_running_wait_for_squeue(tmp_path: Path) -> None:
    with CCBackend(version="1.5.4", clusters=CLUSTERS, tokens={TOKEN}) as backend:
        store = Store.memory()
        # squeue-array.json was taken before job 20's second run started; sacct.json after.
        _cycle(_connector(tmp_path, backend), store, reader=Captured("squeue-array.json"))
        backend.commit()
        assert 20 not in _started(backend)
        # The next cycle's squeue shows it, with its cores: now it is sent, whole.
        _cycle(_connector(tmp_path, backend), store, now=NOW + 60,
               reader=Captured("squeue-finished.json"))
        backend.commit()
        (run,) = [j for j in backend.all_jobs() if j["jobId"] == 20]
        assert all("hwthreads" in r for r in run["resources"])


def test_no_start_is_sent_while_squeue_fails(tmp_path: Path) -> None:
    with CCBackend(version="1.5.4", clusters=CLUSTERS, tokens={TOKEN}) as backend:
        store = Store.memory()
        report = _cycle(_connector(tmp_path, backend), store, reader=NoSqueue())
        assert report.exit_code == 3 and backend.all_jobs() == []
        _cycle(_connector(tmp_path, backend), store, now=NOW + 60,
               reader=Captured("squeue-finished.json"))
        backend.commit()
        assert 20 in _started(backend) and 19 in _started(backend)
