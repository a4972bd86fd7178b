"""The Buildkite connector never submits a Buildkite job to Slurm twice when an sbatch's answer
was lost: sbatch timed out or said "Socket timed out" after slurmctld had taken the job (found
by the chaos suite, tests/chaos, seed 7 of the short Buildkite run: an array of 28 jobs whose
sbatch hung past slurm.timeout was submitted again job by job in the same cycle), nor when the
submit waits in the outbox and is sent again later: a submit sent again asks Slurm (one squeue
and one sacct of our jobs since it was planned) and Buildkite before any new sbatch. What it
needs for that is in its payload (``planned_at``, ``earlier``, ``retry``), nothing the
connector kept of a cycle."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from slurm_sync.actions import Action, Status
from slurm_sync.connector import Direction, Scope, Snapshot, View
from slurm_sync.connectors.buildkite import (
    BKJob,
    BuildkiteConnector,
    Observed,
    Ref,
    Remote,
    Settings,
    plan,
)
from slurm_sync.connectors.buildkite.rest import RestApi, Unavailable
from slurm_sync.connectors.buildkite.stacks import StacksApi
from slurm_sync.connectors.buildkite.submit import LEGACY_LOOKBACK, Submitter
from slurm_sync.errors import SlurmCommandError
from slurm_sync.http import Reply, ServiceClient
from slurm_sync.slurm.control import SubmitRequest, Submitted
from slurm_sync.slurm.model import ExitCode, Job, JobState
from slurm_sync.slurm.query import JobFilter, SacctWindow

NOW = 1_795_500_000.0
PLANNED = NOW - 300  # when the submits sent again here were planned


def _id(n: int) -> str:
    return str(uuid.UUID(int=n))


class _Slurm:
    """A SlurmControl that records each submit and answers from a list (an exception in it is
    raised), and whose reader answers the look-up of a submit sent again: squeue ``active``,
    sacct ``ended`` (or fails with ``lookup_fails``)."""

    def __init__(self, *answers: Any, active: Sequence[Job] = (), ended: Sequence[Job] = (),
                 lookup_fails: bool = False) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, SubmitRequest, int | None]] = []
        self.lookups: list[tuple[str, SacctWindow | None, JobFilter]] = []
        self.next_id = 500
        self.active, self.ended, self.lookup_fails = tuple(active), tuple(ended), lookup_fails
        self.reader = self

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

    def squeue(self, job_filter: JobFilter) -> SimpleNamespace:
        self.lookups.append(("squeue", None, job_filter))
        if self.lookup_fails:
            raise SlurmCommandError(["squeue"], 1, "squeue: error: Unable to contact slurm "
                                    "controller (connect failure)")
        return SimpleNamespace(jobs=self.active)

    def sacct(self, window: SacctWindow, job_filter: JobFilter) -> SimpleNamespace:
        self.lookups.append(("sacct", window, job_filter))
        return SimpleNamespace(jobs=self.ended)


class _Rest(RestApi):
    """Buildkite's REST API answering build look-ups from ``builds`` ({(pipeline, number):
    jobs}; a build not there is not found), or unreachable."""

    def __init__(self, settings: Settings, builds: Mapping[tuple[str, int], list[BKJob]],
                 unreachable: bool = False) -> None:
        assert settings.rest is not None
        super().__init__(ServiceClient("http://127.0.0.1:9"), settings.rest)
        self.builds, self.unreachable = builds, unreachable
        self.asked: list[tuple[str, int]] = []

    def build(self, pipeline: str, number: int) -> list[BKJob] | None:
        self.asked.append((pipeline, number))
        if self.unreachable:
            raise Unavailable("connection refused")
        return self.builds.get((pipeline, number))


class _Stacks(StacksApi):
    """The Stacks API: every job reserved, dispatch ``paused`` or not; records what it is
    told (``finished``, ``notes``)."""

    def __init__(self, settings: Settings, paused: bool = False) -> None:
        assert settings.stacks is not None
        super().__init__(ServiceClient("http://127.0.0.1:9"), settings.stacks, "slurm")
        self.paused = paused
        self.finished: list[tuple[str, str]] = []
        self.notes: list[Mapping[str, str]] = []

    def scheduled(self, limit: int = 1000) -> tuple[bool, list[Any]]:
        return self.paused, []

    def reserve(self, job_ids: Sequence[str]) -> Reply:
        return Reply("PUT", "/batch-reserve", 200, {"reserved": list(job_ids)})

    def finish(self, job_id: str, detail: str) -> Reply:
        self.finished.append((job_id, detail))
        return Reply("POST", f"/jobs/{job_id}/finish", 200, {})

    def notify(self, items: Sequence[Mapping[str, str]]) -> Reply:
        self.notes.extend(items)
        return Reply("POST", "/notifications", 200, {"errors": []})


def _timed_out() -> SlurmCommandError:
    return SlurmCommandError(["sbatch", "--parsable"], -9, "")


def _socket() -> SlurmCommandError:
    return SlurmCommandError(["sbatch", "--parsable"], 1, "sbatch: error: Batch job submission "
                             "failed: Socket timed out on send/recv operation")


def _unreachable() -> SlurmCommandError:
    return SlurmCommandError(["sbatch", "--parsable"], 1, "sbatch: error: Batch job submission "
                             "failed: Unable to contact slurm controller (connect failure)")


def _invalid_partition() -> SlurmCommandError:
    return SlurmCommandError(["sbatch", "--parsable"], 1, "sbatch: error: Batch job submission "
                             "failed: Invalid partition name specified")


def _settings(tmp_path: Path, mode: str = "rest") -> Settings:
    section = ({"rest": {"url": "http://127.0.0.1:9", "organization": "acme",
                         "token": {"file": str(tmp_path / "token")}}}
               if mode == "rest" else
               {"stacks": {"url": "http://127.0.0.1:9", "stack_key": "hpc",
                           "token": {"file": str(tmp_path / "token")}}})
    return Settings.parse({
        "mode": mode, "queue": "slurm", **section,
        "agent": {"config": "/etc/bk.cfg", "build_root": str(tmp_path / "builds")},
        "batch_dir": str(tmp_path / "batches"),
        "policy": {"defaults": {"partition": "main"}},
    })


def _submitter(tmp_path: Path, control: _Slurm, api: RestApi | StacksApi | None = None,
               mode: str = "rest") -> Submitter:
    settings = _settings(tmp_path, mode)
    return Submitter(settings, api if api is not None else _Rest(settings, {}),
                     control, clock=lambda: NOW)  # type: ignore[arg-type]


def _scheduled(n: int) -> BKJob:
    return BKJob(_id(n), "scheduled", "app", 7, ("queue=slurm",), "running", 0,
                 f"2026-11-28T00:00:{n:02d}Z")


def _submit(job: BKJob, n: int = 1, *, retry: bool = False,
            earlier: Sequence[str] = ()) -> Action:
    """A submit as plan makes it; ``retry``: as the outbox hands it back after a failure."""
    payload: dict[str, Any] = {
        "ref": job.ref.text(), "rules": list(job.rules), "options": ["--partition=main"],
        "tags": ["queue=slurm"], "planned_at": PLANNED, "earlier": list(earlier)}
    if retry:
        payload["retry"] = True
    return Action("buildkite", "submit", f"{job.id}#{n}", payload, "scheduled")


def _slurm(job_id: int, ref: Ref, state: JobState = JobState.PENDING, **kw: Any) -> Job:
    return Job(job_id=job_id, name="buildkite", state=state, comment=f"bk:{ref.text()}",
               submit_time=int(PLANNED) + 5, **kw)


@pytest.mark.parametrize("lost", [_timed_out, _socket], ids=["killed", "socket-timed-out"])
def test_an_array_whose_answer_was_lost_is_not_submitted_again_job_by_job(
    tmp_path: Path, lost: Any,
) -> None:
    """sbatch --array timed out: slurmctld may hold the array. Submitting its jobs one by one
    in the same cycle made each Buildkite job run twice; they wait in the outbox instead,
    marked to be looked for before their next sbatch."""
    jobs = [_scheduled(n) for n in (1, 2, 3)]
    control = _Slurm(lost())
    outcomes = _submitter(tmp_path, control).submit_all([_submit(j) for j in jobs])
    assert [kind for kind, _, _ in control.calls] == ["array"]
    assert [o.status for o in outcomes] == [Status.TRANSIENT] * 3
    assert all("may" in o.detail for o in outcomes), [o.detail for o in outcomes]
    assert all(o.action.payload["retry"] is True for o in outcomes)
    assert control.lookups == []  # submits planned this cycle: plan saw Slurm already


def test_an_array_slurm_refused_is_still_submitted_job_by_job(tmp_path: Path) -> None:
    """When sbatch says nothing was submitted (the controller could not be reached), the
    fallback to single jobs stays."""
    jobs = [_scheduled(n) for n in (1, 2)]
    control = _Slurm(_unreachable())
    outcomes = _submitter(tmp_path, control).submit_all([_submit(j) for j in jobs])
    assert [kind for kind, _, _ in control.calls] == ["array", "single", "single"]
    assert [o.status for o in outcomes] == [Status.DONE, Status.DONE]


def test_a_submit_sent_again_finds_its_earlier_job_in_squeue(tmp_path: Path) -> None:
    """A submit waiting in the outbox after a lost answer (or a kill -9 after sbatch): the
    Slurm job it made is in squeue, so nothing is submitted."""
    job = _scheduled(1)
    control = _Slurm(active=(_slurm(77, job.ref),))
    (outcome,) = _submitter(tmp_path, control).submit_all([_submit(job, retry=True)])
    assert control.calls == []
    assert outcome.status is Status.ALREADY_DONE and "77" in outcome.detail
    (squeue, sacct) = control.lookups
    assert squeue[0] == "squeue" and squeue[2].names == ("buildkite",)
    assert sacct[0] == "sacct" and sacct[1] == SacctWindow(int(PLANNED), int(NOW) + 1)


def test_a_submit_sent_again_finds_its_earlier_job_in_an_array(tmp_path: Path) -> None:
    """The same through an array's map file: task 1 of array 80 runs the job."""
    jobs = [_scheduled(n) for n in (1, 2)]
    batches = tmp_path / "batches"
    batches.mkdir()
    batch = "a" * 32
    (batches / f"{batch}.refs").write_text("".join(f"{j.ref.text()}\n" for j in jobs))
    array = Job(job_id=80, name="buildkite", state=JobState.PENDING, comment=f"bk-batch:{batch}",
                array_job_id=80, array_tasks_pending="0-1", submit_time=int(PLANNED) + 5)
    control = _Slurm(active=(array,))
    outcomes = _submitter(tmp_path, control).submit_all([_submit(jobs[1], retry=True)])
    assert control.calls == []
    assert outcomes[0].status is Status.ALREADY_DONE and "80_1" in outcomes[0].detail


def test_a_submit_sent_again_after_its_job_ran_finds_it_in_sacct(tmp_path: Path) -> None:
    """The Slurm job of the lost answer ran and ended before the retry: sacct has it."""
    job = _scheduled(1)
    done = _slurm(78, job.ref, JobState.COMPLETED, exit_code=ExitCode(0),
                  end_time=int(NOW) - 10)
    control = _Slurm(ended=(done,))
    (outcome,) = _submitter(tmp_path, control).submit_all([_submit(job, retry=True)])
    assert control.calls == [] and outcome.status is Status.ALREADY_DONE
    assert "78" in outcome.detail


def test_a_resubmit_sent_again_does_not_take_an_earlier_submits_job_for_its_own(
    tmp_path: Path,
) -> None:
    """Submit 2 of a job whose first Slurm job died before its agent acquired it: that job
    (``earlier``), and one that ended before submit 2 was planned, are not submit 2's; a
    resubmit was swallowed as "in Slurm already" while sacct still showed the first job."""
    job = _scheduled(1)
    died = _slurm(61, job.ref, JobState.FAILED, exit_code=ExitCode(1), end_time=int(NOW) - 200)
    older = _slurm(60, job.ref, JobState.FAILED, exit_code=ExitCode(1),
                   end_time=int(PLANNED) - 30)
    settings = _settings(tmp_path)
    api = _Rest(settings, {("app", 7): [job]})
    control = _Slurm(ended=(older, died))
    (outcome,) = _submitter(tmp_path, control, api).submit_all(
        [_submit(job, 2, retry=True, earlier=["61"])])
    assert [kind for kind, _, _ in control.calls] == ["single"]
    assert outcome.status is Status.DONE


def test_a_resubmit_planned_this_cycle_goes_out_while_sacct_shows_the_first_job(
    tmp_path: Path,
) -> None:
    """plan, then apply, as a cycle does: the first Slurm job died (exit 1, not the agent's
    27) and sacct still shows it; the second submit goes to sbatch."""
    job = _scheduled(1)
    died = _slurm(61, job.ref, JobState.FAILED, exit_code=ExitCode(1), end_time=int(NOW) - 200)
    settings = _settings(tmp_path)
    view = View(now=NOW, ended=(died,), squeue_ok=True, sacct_ok=True)
    once = Snapshot(delivered={"submit": frozenset({f"{job.id}#1"})})
    observed = Observed(remote=Remote(complete=True, scheduled=(job,)), cluster="c")
    (action,) = plan(view, once, Direction.BOTH, Scope(), observed, settings).actions
    control = _Slurm(ended=(died,))
    (outcome,) = _submitter(tmp_path, control).submit_all([action])
    assert [kind for kind, _, _ in control.calls] == ["single"]
    assert outcome.status is Status.DONE and control.lookups == []


def test_a_submit_sent_again_for_a_job_no_longer_scheduled_is_dropped(tmp_path: Path) -> None:
    """Buildkite no longer has the job scheduled (another agent took it, or it was
    cancelled): nothing to submit, and the outbox lets it go."""
    job = _scheduled(1)
    cancelled = BKJob(job.id, "canceled", "app", 7, job.rules, "canceled")
    settings = _settings(tmp_path)
    api = _Rest(settings, {("app", 7): [cancelled]})
    control = _Slurm()
    (outcome,) = _submitter(tmp_path, control, api).submit_all([_submit(job, retry=True)])
    assert control.calls == [] and api.asked == [("app", 7)]
    assert outcome.status is Status.ALREADY_DONE and "canceled" in outcome.detail
    gone = _Rest(settings, {})  # the build itself is gone
    (outcome,) = _submitter(tmp_path, _Slurm(), gone).submit_all([_submit(job, retry=True)])
    assert outcome.status is Status.ALREADY_DONE and "no longer scheduled" in outcome.detail


def test_a_submit_sent_again_waits_while_slurm_is_unread(tmp_path: Path) -> None:
    """Without an answer from Slurm, an earlier submission cannot be ruled out: it waits."""
    job = _scheduled(1)
    control = _Slurm(lookup_fails=True)
    (outcome,) = _submitter(tmp_path, control).submit_all([_submit(job, retry=True)])
    assert control.calls == [] and outcome.status is Status.TRANSIENT
    assert "may be in Slurm" in outcome.detail and outcome.action.payload["retry"] is True


def test_a_submit_sent_again_goes_while_buildkite_is_unread(tmp_path: Path) -> None:
    """Buildkite down, Slurm read: the job is not in Slurm, so it goes (had it been cancelled
    meanwhile, its agent would exit 27); waiting would add a doubled backoff per outage."""
    job = _scheduled(1)
    control = _Slurm()
    api = _Rest(_settings(tmp_path), {}, unreachable=True)
    (outcome,) = _submitter(tmp_path, control, api).submit_all([_submit(job, retry=True)])
    assert [kind for kind, _, _ in control.calls] == ["single"]
    assert outcome.status is Status.DONE


def test_a_submit_of_a_job_still_scheduled_and_nowhere_in_slurm_goes_out(tmp_path: Path) -> None:
    job = _scheduled(1)
    other = _scheduled(2)
    settings = _settings(tmp_path)
    api = _Rest(settings, {("app", 7): [job, other]})
    control = _Slurm(active=(_slurm(90, other.ref),))
    (outcome,) = _submitter(tmp_path, control, api).submit_all([_submit(job, 2, retry=True)])
    assert [kind for kind, _, _ in control.calls] == ["single"]
    assert outcome.status is Status.DONE
    assert control.calls[0][1].comment == f"bk:{job.ref.text()}"


def test_a_submit_queued_before_it_said_when_it_was_planned_is_looked_for_too(
    tmp_path: Path,
) -> None:
    """An outbox entry of an earlier version has no ``planned_at``: it is sent again only
    after the same look-up, over the last LEGACY_LOOKBACK seconds."""
    job = _scheduled(1)
    old = Action("buildkite", "submit", f"{job.id}#1", {
        "ref": job.ref.text(), "rules": list(job.rules), "options": ["--partition=main"],
        "tags": ["queue=slurm"]}, "scheduled")
    control = _Slurm(active=(_slurm(77, job.ref),))
    (outcome,) = _submitter(tmp_path, control).submit_all([old])
    assert control.calls == [] and outcome.status is Status.ALREADY_DONE
    assert control.lookups[1][1] == SacctWindow(int(NOW) - LEGACY_LOOKBACK, int(NOW) + 1)


def test_a_submit_slurm_could_not_take_waits_and_is_looked_for_next_time(
    tmp_path: Path,
) -> None:
    job = _scheduled(1)
    control = _Slurm(_unreachable())
    (outcome,) = _submitter(tmp_path, control).submit_all([_submit(job)])
    assert outcome.status is Status.TRANSIENT
    assert "SLURMCTLD_COMMUNICATIONS_CONNECTION_ERROR" in outcome.detail
    again = outcome.action
    assert again.payload["retry"] is True and again.payload["planned_at"] == PLANNED
    settings = _settings(tmp_path)
    control = _Slurm()
    (outcome,) = _submitter(tmp_path, control, _Rest(settings, {("app", 7): [job]})) \
        .submit_all([again])
    assert [c[0] for c in control.lookups] == ["squeue", "sacct"]
    assert outcome.status is Status.DONE


@pytest.mark.parametrize("mode", ["rest", "stacks"])
def test_a_job_slurm_refuses_is_refused_for_good(tmp_path: Path, mode: str) -> None:
    """Slurm's own refusal (an invalid partition) is final; in mode stacks Buildkite fails
    the job with the reason, rather than leave it scheduled."""
    job = _scheduled(1)
    settings = _settings(tmp_path, mode)
    api: RestApi | StacksApi = (_Stacks(settings) if mode == "stacks"
                                else _Rest(settings, {}))
    (outcome,) = _submitter(tmp_path, _Slurm(_invalid_partition()), api, mode).submit_all(
        [_submit(job)])
    assert outcome.status is Status.PERMANENT
    assert "Invalid partition name specified" in outcome.detail
    if isinstance(api, _Stacks):
        assert [j for j, _ in api.finished] == [job.id]
        assert "Invalid partition name specified" in api.finished[0][1]
        assert "failed in Buildkite" in outcome.detail


def test_a_timeline_note_names_the_slurm_job_each_submit_made(tmp_path: Path) -> None:
    """Mode stacks: 'queued in Slurm job N on partition P', from what sbatch answered."""
    jobs = [_scheduled(n) for n in (1, 2)]
    settings = _settings(tmp_path, "stacks")
    api = _Stacks(settings)
    single = _submit(_scheduled(3))
    single = Action(single.connector, single.kind, single.key,
                    {**single.payload, "options": ["--partition=gpu"]}, single.reason)
    outcomes = _submitter(tmp_path, _Slurm(), api, "stacks").submit_all(
        [_submit(j) for j in jobs] + [single])
    assert [o.status for o in outcomes] == [Status.DONE] * 3
    assert sorted((n["job_uuid"], n["detail"]) for n in api.notes) == sorted([
        (jobs[0].id, "queued in Slurm job 501_0 on partition main"),
        (jobs[1].id, "queued in Slurm job 501_1 on partition main"),
        (_id(3), "queued in Slurm job 502 on partition gpu")])


def test_a_submit_sent_again_waits_while_dispatch_is_paused(tmp_path: Path) -> None:
    job = _scheduled(1)
    settings = _settings(tmp_path, "stacks")
    control = _Slurm()
    (outcome,) = _submitter(tmp_path, control, _Stacks(settings, paused=True),
                            "stacks").submit_all([_submit(job, retry=True)])
    assert control.calls == [] and outcome.status is Status.TRANSIENT
    assert "paused" in outcome.detail


def test_the_connector_submits_through_its_control(tmp_path: Path) -> None:
    """The connector's apply_many hands its submits to Submitter with the Slurm control
    ``bind`` gave it; unbound, they wait."""
    token = tmp_path / "token"
    token.write_text("bkua_x\n")
    token.chmod(0o600)
    connector = BuildkiteConnector({
        "mode": "rest", "queue": "slurm",
        "rest": {"url": "http://127.0.0.1:9", "organization": "acme",
                 "token": {"file": str(token)}},
        "agent": {"config": "/etc/bk.cfg", "build_root": str(tmp_path / "builds")},
        "batch_dir": str(tmp_path / "batches")})
    job = _scheduled(1)
    (waiting,) = connector.apply_many([_submit(job)])
    assert waiting.status is Status.TRANSIENT and "not bound" in waiting.detail
    assert waiting.action.payload["retry"] is True
    control = _Slurm()
    connector.control = control  # type: ignore[assignment]
    (outcome,) = connector.apply_many([_submit(job)])
    assert outcome.status is Status.DONE and [c[0] for c in control.calls] == ["single"]
    connector.close()
