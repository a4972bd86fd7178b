"""The Buildkite connector never submits a Buildkite job to Slurm twice when an sbatch's answer
was lost: sbatch timed out or said "Socket timed out" after slurmctld had taken the job (found
by the chaos suite, tests/chaos, seed 7 of the short Buildkite run: an array of 28 jobs whose
sbatch hung past slurm.timeout was submitted again job by job in the same cycle), nor when the
submit waits in the outbox and is sent again later (or after a kill -9 between sbatch and the
commit): before sbatch, the submit looks for its job in this cycle's Slurm jobs and in
Buildkite's answer."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.actions import Action, Status
from slurm_sync.connector import Snapshot, View
from slurm_sync.connectors.buildkite import BKJob, BuildkiteConnector, Ref, Remote
from slurm_sync.errors import SlurmCommandError
from slurm_sync.slurm.control import SubmitRequest, Submitted
from slurm_sync.slurm.model import ExitCode, Job, JobState

NOW = 1_795_500_000.0


def _id(n: int) -> str:
    return str(uuid.UUID(int=n))


class _Sbatch:
    """A SlurmControl that records each submit and answers from a list (an exception in it
    is raised)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, SubmitRequest, int | None]] = []
        self.next_id = 500

    def _answer(self, size: int | None) -> Submitted:
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        self.next_id += 1
        return Submitted(self.next_id, array_size=size)

    def submit(self, request: SubmitRequest) -> Submitted:
        self.calls.append(("single", request, None))
        return self._answer(None)

    def submit_array(self, request: SubmitRequest, count: int) -> Submitted:
        self.calls.append(("array", request, count))
        return self._answer(count)


def _timed_out() -> SlurmCommandError:
    return SlurmCommandError(["sbatch", "--parsable"], None, "", detail="timed out after 8 s")


def _socket() -> SlurmCommandError:
    return SlurmCommandError(["sbatch", "--parsable"], 1, "sbatch: error: Batch job submission "
                             "failed: Socket timed out on send/recv operation")


def _refused() -> SlurmCommandError:
    return SlurmCommandError(["sbatch", "--parsable"], 1, "sbatch: error: Batch job submission "
                             "failed: Unable to contact slurm controller (connect failure)")


def _connector(tmp_path: Path) -> BuildkiteConnector:
    token = tmp_path / "token"
    token.write_text("bkua_x\n")
    token.chmod(0o600)
    connector = BuildkiteConnector({
        "mode": "rest", "queue": "slurm",
        "rest": {"url": "http://127.0.0.1:9", "organization": "acme",
                 "token": {"file": str(token)}},
        "agent": {"config": "/etc/bk.cfg", "build_root": str(tmp_path / "builds")},
        "batch_dir": str(tmp_path / "batches"),
        "policy": {"defaults": {"partition": "main"}},
    })
    connector.cluster = "c"
    return connector


def _scheduled(n: int) -> BKJob:
    return BKJob(_id(n), "scheduled", "app", 7, ("queue=slurm",), "running", 0,
                 f"2026-11-28T00:00:{n:02d}Z")


def _submit(job: BKJob, n: int = 1) -> Action:
    return Action("buildkite", "submit", f"{job.id}#{n}", {
        "ref": job.ref.text(), "rules": list(job.rules), "options": ["--partition=main"],
        "tags": ["queue=slurm"]}, "scheduled")


def _observe(connector: BuildkiteConnector, monkeypatch: pytest.MonkeyPatch, remote: Remote,
             active: tuple[Job, ...] = (), ended: tuple[Job, ...] = (),
             squeue_ok: bool = True) -> None:
    """One cycle's observe: this view of Slurm, and ``remote`` as Buildkite's answer."""
    monkeypatch.setattr(connector, "_observe_rest", lambda ours: remote)
    view = View(now=NOW, active=active, ended=ended, squeue_ok=squeue_ok, sacct_ok=True)
    connector.observe(view, Snapshot())


def _slurm(job_id: int, ref: Ref, state: JobState = JobState.PENDING, **kw: Any) -> Job:
    return Job(job_id=job_id, name="buildkite", state=state, comment=f"bk:{ref.text()}",
               submit_time=int(NOW) - 60, **kw)


@pytest.mark.parametrize("lost", [_timed_out, _socket], ids=["timeout", "socket-timed-out"])
def test_an_array_whose_answer_was_lost_is_not_submitted_again_job_by_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lost: Any,
) -> None:
    """sbatch --array timed out: slurmctld may hold the array. Submitting its jobs one by one
    in the same cycle made each Buildkite job run twice; they wait in the outbox instead, and
    the next cycle finds the array in squeue."""
    connector = _connector(tmp_path)
    jobs = [_scheduled(n) for n in (1, 2, 3)]
    _observe(connector, monkeypatch, Remote(complete=True, scheduled=tuple(jobs),
                                            known={j.id: j for j in jobs}))
    control = _Sbatch(lost())
    connector.control = control  # type: ignore[assignment]
    outcomes = connector.apply_many([_submit(j) for j in jobs])
    assert [kind for kind, _, _ in control.calls] == ["array"]
    assert [o.status for o in outcomes] == [Status.TRANSIENT] * 3
    assert all("may" in o.detail for o in outcomes), [o.detail for o in outcomes]


def test_an_array_slurm_refused_is_still_submitted_job_by_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When sbatch says nothing was submitted (the controller could not be reached), the
    fallback to single jobs stays."""
    connector = _connector(tmp_path)
    jobs = [_scheduled(n) for n in (1, 2)]
    _observe(connector, monkeypatch, Remote(complete=True, scheduled=tuple(jobs),
                                            known={j.id: j for j in jobs}))
    control = _Sbatch(_refused())
    connector.control = control  # type: ignore[assignment]
    outcomes = connector.apply_many([_submit(j) for j in jobs])
    assert [kind for kind, _, _ in control.calls] == ["array", "single", "single"]
    assert [o.status for o in outcomes] == [Status.DONE, Status.DONE]


def test_a_submit_sent_again_finds_its_earlier_job_in_squeue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A submit waiting in the outbox after a lost answer (or a kill -9 after sbatch): the
    Slurm job it made is in this cycle's squeue, so nothing is submitted."""
    connector = _connector(tmp_path)
    job = _scheduled(1)
    _observe(connector, monkeypatch, Remote(complete=True, scheduled=(job,), known={job.id: job}),
             active=(_slurm(77, job.ref),))
    control = _Sbatch()
    connector.control = control  # type: ignore[assignment]
    (outcome,) = connector.apply_many([_submit(job)])
    assert control.calls == []
    assert outcome.status is Status.ALREADY_DONE and "77" in outcome.detail


def test_a_submit_sent_again_finds_its_earlier_job_in_an_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same through an array's map file: task 1 of array 80 runs the job."""
    connector = _connector(tmp_path)
    jobs = [_scheduled(n) for n in (1, 2)]
    batches = tmp_path / "batches"
    batches.mkdir()
    batch = "a" * 32
    (batches / f"{batch}.refs").write_text("".join(f"{j.ref.text()}\n" for j in jobs))
    array = Job(job_id=80, name="buildkite", state=JobState.PENDING, comment=f"bk-batch:{batch}",
                array_job_id=80, array_tasks_pending="0-1", submit_time=int(NOW) - 60)
    _observe(connector, monkeypatch, Remote(complete=True, scheduled=tuple(jobs),
                                            known={j.id: j for j in jobs}), active=(array,))
    control = _Sbatch()
    connector.control = control  # type: ignore[assignment]
    outcomes = connector.apply_many([_submit(jobs[1])])
    assert control.calls == []
    assert outcomes[0].status is Status.ALREADY_DONE and "80_1" in outcomes[0].detail


def test_a_submit_sent_again_after_its_job_ran_finds_it_in_sacct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Slurm job of the lost answer ran and ended before the retry: sacct's window has
    it; the Buildkite job passed meanwhile."""
    connector = _connector(tmp_path)
    job = _scheduled(1)
    passed = BKJob(job.id, "passed", "app", 7, job.rules, "passed")
    done = _slurm(78, job.ref, JobState.COMPLETED, exit_code=ExitCode(0))
    _observe(connector, monkeypatch, Remote(complete=True, known={job.id: passed}),
             ended=(done,))
    control = _Sbatch()
    connector.control = control  # type: ignore[assignment]
    (outcome,) = connector.apply_many([_submit(job)])
    assert control.calls == [] and outcome.status is Status.ALREADY_DONE


def test_a_submit_sent_again_for_a_job_no_longer_scheduled_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Buildkite's complete answer no longer lists the job as scheduled (another agent took
    it, or it was cancelled): nothing to submit, and the outbox lets it go."""
    connector = _connector(tmp_path)
    job = _scheduled(1)
    cancelled = BKJob(job.id, "canceled", "app", 7, job.rules, "canceled")
    _observe(connector, monkeypatch, Remote(complete=True, known={job.id: cancelled}))
    control = _Sbatch()
    connector.control = control  # type: ignore[assignment]
    (outcome,) = connector.apply_many([_submit(job)])
    assert control.calls == []
    assert outcome.status is Status.ALREADY_DONE and "canceled" in outcome.detail


def test_a_submit_sent_again_waits_while_squeue_is_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without this cycle's squeue, an earlier submission cannot be ruled out: it waits."""
    connector = _connector(tmp_path)
    job = _scheduled(1)
    _observe(connector, monkeypatch, Remote(complete=True, scheduled=(job,),
                                            known={job.id: job}), squeue_ok=False)
    control = _Sbatch()
    connector.control = control  # type: ignore[assignment]
    (outcome,) = connector.apply_many([_submit(job)])
    assert control.calls == [] and outcome.status is Status.TRANSIENT


def test_a_submit_sent_again_goes_while_buildkite_is_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Buildkite down, squeue read: the job is not in Slurm, so it goes (had it been cancelled
    meanwhile, its agent would exit 27); waiting would add a doubled backoff per outage."""
    connector = _connector(tmp_path)
    job = _scheduled(1)
    _observe(connector, monkeypatch, Remote())
    control = _Sbatch()
    connector.control = control  # type: ignore[assignment]
    (outcome,) = connector.apply_many([_submit(job)])
    assert [kind for kind, _, _ in control.calls] == ["single"]
    assert outcome.status is Status.DONE


def test_a_submit_of_a_job_still_scheduled_and_nowhere_in_slurm_goes_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    connector = _connector(tmp_path)
    job = _scheduled(1)
    other = _scheduled(2)
    _observe(connector, monkeypatch, Remote(complete=True, scheduled=(job, other),
                                            known={job.id: job, other.id: other}),
             active=(_slurm(90, other.ref),))
    control = _Sbatch()
    connector.control = control  # type: ignore[assignment]
    (outcome,) = connector.apply_many([_submit(job, 2)])
    assert [kind for kind, _, _ in control.calls] == ["single"]
    assert outcome.status is Status.DONE
    assert control.calls[0][1].comment == f"bk:{job.ref.text()}"
