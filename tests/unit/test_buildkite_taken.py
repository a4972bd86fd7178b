"""A pending Slurm job is cancelled as "taken by another agent" only when that agent cannot be
its own. A cycle reads squeue first and Buildkite after: a job squeue showed pending may start
in between and its agent acquire the Buildkite job, which Buildkite then shows running. Found by
the chaos suite (tests/chaos, short Buildkite run, seed 7): task 100028_10 was pending at the
cycle's squeue (+47.62 s), started at +47.85 s and its agent acquired the job; Buildkite, read
next, said running; the task had pended past taken_grace, so it was scancel'd at +50.76 s as
taken by another agent, and the Buildkite job it was running failed. Now such jobs are asked
about again in a squeue made after Buildkite was read, and only those still pending go."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from slurm_sync.actions import Action
from slurm_sync.connector import Direction, Scope, Snapshot, View
from slurm_sync.connectors.buildkite import BKJob, Ref, Remote, Settings, observe, plan
from slurm_sync.connectors.buildkite.rest import RestApi
from slurm_sync.errors import SlurmCommandError
from slurm_sync.http import ServiceClient
from slurm_sync.slurm.model import Job, JobState

NOW = 1_795_500_000.0


def _id(n: int) -> str:
    return str(uuid.UUID(int=n))


class _Squeue:
    """What a squeue made now says of the ids asked: ``records`` per id (none: unknown)."""

    def __init__(self, records: dict[int, tuple[Job, ...]], fail: bool = False) -> None:
        self.records = records
        self.fail = fail
        self.asked: list[list[int]] = []
        self.cleared = 0

    def clear_cache(self) -> None:
        self.cleared += 1

    def status_many(self, ids: Any) -> dict[int, tuple[Job, ...]]:
        self.asked.append(sorted(ids))
        if self.fail:
            raise SlurmCommandError(["squeue"], 1, "slurm_load_jobs error: Unable to contact "
                                    "slurm controller")
        return {i: self.records.get(i, ()) for i in ids}


def _settings(tmp_path: Path) -> Settings:
    return Settings.parse({
        "mode": "rest", "queue": "slurm",
        "rest": {"url": "http://127.0.0.1:9", "organization": "acme",
                 "token": {"file": str(tmp_path / "token")}},
        "agent": {"config": "/etc/bk.cfg", "build_root": str(tmp_path / "builds")},
        "batch_dir": str(tmp_path / "batches"), "taken_grace_seconds": 120,
    })


class _Buildkite(RestApi):
    """Buildkite's REST API answering ``known`` as this cycle's listing."""

    def __init__(self, settings: Settings, known: dict[str, BKJob]) -> None:
        assert settings.rest is not None
        super().__init__(ServiceClient("http://127.0.0.1:9"), settings.rest)
        self.known = known

    def remote(self, ours: Any, **_: Any) -> Remote:
        return Remote(complete=True, known=self.known)


def _job(job_id: int, ref: Ref, state: JobState, **kw: Any) -> Job:
    return Job(job_id=job_id, name="buildkite", state=state, comment=f"bk:{ref.text()}",
               submit_time=int(NOW) - 600, **kw)


def _cycle(tmp_path: Path, control: _Squeue, active: tuple[Job, ...],
           known: dict[str, BKJob]) -> list[Action]:
    """observe (Buildkite answers ``known``, Slurm's later squeue ``control``) and plan, as a
    cycle does."""
    settings = _settings(tmp_path)
    view = View(now=NOW, active=active, squeue_ok=True, sacct_ok=True)
    api = _Buildkite(settings, known)
    observed = observe(view, Snapshot(), settings=settings, api=api,
                       control=control, cluster="c", dry_run=False,  # type: ignore[arg-type]
                       warned=set())
    api.client.close()
    result = plan(view, Snapshot(), Direction.BOTH, Scope(), observed, settings)
    assert result.facts == ()
    return list(result.actions)


def test_a_job_that_started_after_the_cycles_squeue_is_not_cancelled_as_taken(
    tmp_path: Path,
) -> None:
    ref = Ref("app", 7, _id(1))
    seen = _job(70, ref, JobState.PENDING)  # the cycle's squeue
    now = _job(70, ref, JobState.RUNNING, start_time=int(NOW) - 1)  # a squeue after Buildkite
    control = _Squeue({70: (now,)})
    actions = _cycle(tmp_path, control, (seen,),
                  {ref.job: BKJob(ref.job, "running", "app", 7, (), "running")})
    assert actions == []
    assert control.asked == [[70]] and control.cleared == 1


def test_a_job_still_pending_after_buildkite_was_read_is_cancelled_as_taken(
    tmp_path: Path,
) -> None:
    ref = Ref("app", 7, _id(1))
    seen = _job(70, ref, JobState.PENDING)
    control = _Squeue({70: (seen,)})
    actions = _cycle(tmp_path, control, (seen,),
                  {ref.job: BKJob(ref.job, "accepted", "app", 7, (), "running")})
    assert [a.kind for a in actions] == ["cancel"] and "another agent" in actions[0].reason


def test_an_array_task_is_asked_about_through_its_array(
    tmp_path: Path,
) -> None:
    """Tasks 0 and 1 of array 80 pend at the cycle's squeue and both Buildkite jobs are held;
    afterwards task 0 runs (its own agent took its job), task 1 still pends: only task 1
    goes."""
    refs = [Ref("app", 7, _id(n)) for n in (1, 2)]
    batches = tmp_path / "batches"
    batches.mkdir()
    batch = "b" * 32
    (batches / f"{batch}.refs").write_text("".join(f"{r.text()}\n" for r in refs))
    common: dict[str, Any] = {"name": "buildkite", "comment": f"bk-batch:{batch}",
                              "array_job_id": 80, "submit_time": int(NOW) - 600}
    seen = Job(job_id=80, state=JobState.PENDING, array_tasks_pending="0-1", **common)
    later = (Job(job_id=80, state=JobState.PENDING, array_tasks_pending="1", **common),
             Job(job_id=81, state=JobState.RUNNING, array_task_id=0, start_time=int(NOW) - 1,
                 **common))
    control = _Squeue({80: later})
    actions = _cycle(tmp_path, control, (seen,),
                  {r.job: BKJob(r.job, "running", "app", 7, (), "running") for r in refs})
    assert [(a.kind, a.payload["slurm_id"]) for a in actions] == [("cancel", "80_1")]
    assert control.asked == [[80]]


def test_no_squeue_after_buildkite_cancels_nothing_as_taken(
    tmp_path: Path,
) -> None:
    ref = Ref("app", 7, _id(1))
    seen = _job(70, ref, JobState.PENDING)
    control = _Squeue({}, fail=True)
    assert _cycle(tmp_path, control, (seen,),
                  {ref.job: BKJob(ref.job, "running", "app", 7, (), "running")}) == []


def test_jobs_within_the_taken_grace_or_not_held_cost_no_squeue(
    tmp_path: Path,
) -> None:
    ref = Ref("app", 7, _id(1))
    young = Job(job_id=70, name="buildkite", state=JobState.PENDING,
                comment=f"bk:{ref.text()}", submit_time=int(NOW) - 10)
    control = _Squeue({})
    assert _cycle(tmp_path, control, (young,),
                  {ref.job: BKJob(ref.job, "running", "app", 7, (), "running")}) == []
    assert _cycle(tmp_path, control, (_job(70, ref, JobState.PENDING),),
                  {ref.job: BKJob(ref.job, "scheduled", "app", 7, (), "running")}) == []
    assert control.asked == []
