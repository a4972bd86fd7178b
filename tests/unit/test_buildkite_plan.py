"""The Buildkite connector's decisions, pure: which Slurm job runs which Buildkite job, what is
submitted (caps, pauses, resubmits, refusals) and what is cancelled (and when)."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.connector import Direction, Scope, Snapshot, View
from slurm_sync.connectors.buildkite import (
    BKJob,
    BuildkiteConnector,
    Ref,
    Remote,
    job_script,
    matches_queue,
    runs_of,
)
from slurm_sync.errors import SlurmCommandError
from slurm_sync.slurm.model import ExitCode, Job, JobState

NOW = 1_795_500_000.0


def _id(n: int) -> str:
    return str(uuid.UUID(int=n))


def _connector(tmp_path: Path, **extra: Any) -> BuildkiteConnector:
    token = tmp_path / "token"
    token.write_text("bkua_x\n")
    token.chmod(0o600)
    settings = {
        "mode": "rest", "queue": "slurm",
        "rest": {"url": "http://127.0.0.1:9", "organization": "acme",
                 "token": {"file": str(token)}},
        "agent": {"config": "/etc/bk.cfg", "build_root": "/scratch/bk"},
        "batch_dir": "/scratch/bk/batches",
        "cancel_grace_seconds": 60, "taken_grace_seconds": 120, **extra,
    }
    connector = BuildkiteConnector(settings)
    connector.cluster = "c"
    return connector


def _slurm(job_id: int, ref: Ref, state: JobState = JobState.RUNNING, **kw: Any) -> Job:
    return Job(job_id=job_id, name="buildkite", state=state, comment=f"bk:{ref.text()}",
               submit_time=int(NOW) - 600, **kw)


def _plan(connector: BuildkiteConnector, remote: Remote, active: tuple[Job, ...] = (),
          ended: tuple[Job, ...] = (), snapshot: Snapshot | None = None) -> list[Any]:
    connector._remote = remote
    view = View(now=NOW, active=active, ended=ended, squeue_ok=True, sacct_ok=True)
    return connector.plan(view, snapshot or Snapshot(), Direction.BOTH, Scope())


def _scheduled(n: int, *rules: str, pipeline: str = "app", priority: int = 0) -> BKJob:
    return BKJob(_id(n), "scheduled", pipeline, 7, ("queue=slurm", *rules), "running",
                 priority, f"2026-11-28T00:00:{n:02d}Z")


def test_queue_rules_must_all_be_ours() -> None:
    tags = frozenset({"arch=x86_64"})
    assert matches_queue(["queue=slurm", "slurm_time=10"], "slurm", tags)
    assert matches_queue(["queue=slurm", "arch=x86_64"], "slurm", tags)
    assert matches_queue(["queue=slurm", "arch=*"], "slurm", tags)
    assert not matches_queue(["queue=slurm", "os=mac"], "slurm", tags)
    assert not matches_queue(["queue=gpu"], "slurm", tags)
    assert not matches_queue(["slurm_time=10"], "slurm", tags)


def test_slurm_jobs_map_to_buildkite_jobs_by_comment_and_batch_map() -> None:
    one = Ref("app", 3, _id(1))
    batch = [Ref("app", 3, _id(2)), Ref("app", 3, _id(3)), Ref("app", 3, _id(4))]
    jobs = [
        _slurm(10, one),
        Job(job_id=12, name="buildkite", comment="bk-batch:" + "a" * 32, array_job_id=11,
            array_task_id=1, state=JobState.RUNNING),
        Job(job_id=11, name="buildkite", comment="bk-batch:" + "a" * 32, array_job_id=11,
            array_tasks_pending="0,2", state=JobState.PENDING),
        Job(job_id=13, name="other", comment=f"bk:{one.text()}"),
        Job(job_id=14, name="buildkite", comment="bk:../../etc/passwd"),
    ]
    runs = runs_of(jobs, {"a" * 32: batch}, "buildkite")
    assert [(r.slurm_id, r.ref.job) for r in runs] == [
        ("10", one.job), ("11_1", batch[1].job), ("11_0", batch[0].job), ("11_2", batch[2].job)]


def test_scheduled_jobs_are_submitted_by_priority_within_the_caps(tmp_path: Path) -> None:
    connector = _connector(tmp_path, max_in_flight=3, pipeline_limits={"big": 1})
    running = _slurm(50, Ref("app", 1, _id(90)))
    remote = Remote(complete=True, scheduled=(
        _scheduled(1), _scheduled(2, priority=5), _scheduled(3, pipeline="big"),
        _scheduled(4, pipeline="big"), _scheduled(5)))
    plan = _plan(connector, remote, active=(running,))
    submitted = [a.key for a in plan if a.kind == "submit"]
    # 1 in flight + 2 more = max_in_flight 3; priority first; one 'big' at most
    assert submitted == [f"{_id(2)}#1", f"{_id(1)}#1"]
    assert all("--partition" not in " ".join(a.payload["options"]) for a in plan)


def test_nothing_is_submitted_while_dispatch_is_paused_or_buildkite_unread(
    tmp_path: Path
) -> None:
    connector = _connector(tmp_path)
    assert _plan(connector, Remote(complete=True, paused=True, scheduled=(_scheduled(1),))) == []
    assert _plan(connector, Remote(complete=False, scheduled=(_scheduled(1),))) == []


def test_a_job_already_in_slurm_is_not_submitted_again(tmp_path: Path) -> None:
    connector = _connector(tmp_path)
    job = _scheduled(1)
    pending = _slurm(60, job.ref, JobState.PENDING)
    assert _plan(connector, Remote(complete=True, scheduled=(job,)), active=(pending,)) == []


def test_resubmits_are_bounded_and_exit_27_stops_them(tmp_path: Path) -> None:
    connector = _connector(tmp_path, max_submits=2)
    job = _scheduled(1)
    remote = Remote(complete=True, scheduled=(job,))
    died = _slurm(61, job.ref, JobState.FAILED, exit_code=ExitCode(1))
    once = Snapshot(delivered={"submit": frozenset({f"{job.id}#1"})})
    plan = _plan(connector, remote, ended=(died,), snapshot=once)
    assert [a.key for a in plan] == [f"{job.id}#2"] and "submit 2" in plan[0].reason
    twice = Snapshot(delivered={"submit": frozenset({f"{job.id}#1", f"{job.id}#2"})})
    plan = _plan(connector, remote, ended=(died,), snapshot=twice)
    assert [a.key for a in plan] == [f"{job.id}#refused"]
    assert "never acquired" in plan[0].payload["refused"]
    taken = _slurm(62, job.ref, JobState.COMPLETED, exit_code=ExitCode(27))
    assert _plan(connector, remote, ended=(taken,), snapshot=once) == []
    reported = Snapshot(failed={"submit": frozenset({f"{job.id}#refused"})})
    assert _plan(connector, remote, snapshot=reported) == []


def test_a_forbidden_option_is_refused_with_its_reason(tmp_path: Path) -> None:
    connector = _connector(tmp_path)
    plan = _plan(connector, Remote(complete=True, scheduled=(
        _scheduled(1, "slurm_export=ALL"),)))
    assert plan[0].key.endswith("#refused")
    assert "--export is never taken from a pipeline" in plan[0].payload["refused"]


@pytest.mark.parametrize(("state", "build_state", "kind"), [
    ("canceled", "canceled", "cancel"),
    ("timed_out", "failed", "cancel"),
    ("scheduled", "passed", "cancel"),
    ("running", "running", None),
    ("scheduled", "running", None),
])
def test_pending_jobs_are_cancelled_on_buildkites_word(
    tmp_path: Path, state: str, build_state: str, kind: str | None
) -> None:
    connector = _connector(tmp_path)
    ref = Ref("app", 7, _id(1))
    pending = _slurm(70, ref, JobState.PENDING)
    remote = Remote(complete=True, known={ref.job: BKJob(ref.job, state, "app", 7, (),
                                                          build_state)},
                    taken_elsewhere=frozenset({"70"}))
    plan = _plan(connector, remote, active=(pending,))
    if state == "running":
        # another agent holds it: after taken_grace (the job waited 600 s > 120 s), and a
        # squeue after Buildkite's answer still showed it pending (taken_elsewhere)
        assert [a.kind for a in plan] == ["cancel"] and "another agent" in plan[0].reason
    else:
        assert [a.kind for a in plan] == ([kind] if kind else [])


def test_a_running_agent_gets_sigterm_then_a_cancel_after_the_grace(tmp_path: Path) -> None:
    connector = _connector(tmp_path)
    ref = Ref("app", 7, _id(1))
    running = _slurm(71, ref)
    remote = Remote(complete=True, known={ref.job: BKJob(ref.job, "canceling", "app", 7)})
    first = _plan(connector, remote, active=(running,))
    assert [a.kind for a in first] == ["signal"]
    key = first[0].key
    soon = Snapshot(delivered={"signal": frozenset({key})},
                    delivered_at={"signal": {key: NOW - 10}})
    assert _plan(connector, remote, active=(running,), snapshot=soon) == []
    later = Snapshot(delivered={"signal": frozenset({key})},
                     delivered_at={"signal": {key: NOW - 61}})
    assert [a.kind for a in _plan(connector, remote, active=(running,), snapshot=later)] == [
        "cancel"]


def test_no_word_from_buildkite_means_no_cancel(tmp_path: Path) -> None:
    connector = _connector(tmp_path)
    running = _slurm(72, Ref("app", 7, _id(1)))
    assert _plan(connector, Remote(complete=True), active=(running,)) == []
    view = View(now=NOW, active=(running,), squeue_ok=False, sacct_ok=True)
    connector._remote = Remote(complete=True, known={_id(1): BKJob(_id(1), "canceled")})
    assert connector.plan(view, Snapshot(), Direction.BOTH, Scope()) == []


def test_the_job_script_quotes_config_and_checks_the_job_id(tmp_path: Path) -> None:
    ref = Ref("app", 7, _id(5))
    script = job_script(agent="/opt/bk agent", config="/etc/bk.cfg", build_root="/scratch/b b",
                        per_build=False, tags="queue=slurm,arch=*", ref=ref)
    assert "'/opt/bk agent' start --acquire-job \"$JOB\"" in script
    assert "--config /etc/bk.cfg" in script and "BUILD_ROOT='/scratch/b b'" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    batch = job_script(agent="a", config="c", build_root="/b", per_build=True, tags="queue=q",
                       batch_file="/b/x.refs")
    assert 'sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" /b/x.refs' in batch
    assert "rm -rf" not in batch  # a build's shared path is not removed by one of its jobs


class _Squeue:
    """What squeue says of the ids asked (a missing id: squeue does not know it)."""

    def __init__(self, known: dict[int, JobState], fail: bool = False) -> None:
        self.known, self.fail, self.asked = known, fail, []  # type: ignore[var-annotated]

    def status(self, ids: Any) -> dict[int, Job | None]:
        self.asked.append(sorted(ids))
        if self.fail:
            raise SlurmCommandError(["squeue"], 1, "slurmctld down")
        return {i: (Job(job_id=i, state=self.known[i]) if i in self.known else None)
                for i in ids}


def test_build_paths_of_jobs_slurm_no_longer_runs_are_pruned_and_nothing_else(
    tmp_path: Path,
) -> None:
    root = tmp_path / "builds"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    for name in ("job-1", "job-2", "job-3", "job-4", "job-5", "cache", "job-7x"):
        (root / name / "src").mkdir(parents=True)
    (root / "job-6").symlink_to(outside)
    for name in ("job-1", "job-2", "job-4", "job-5", "cache", "job-7x"):
        os.utime(root / name, (NOW - 3600, NOW - 3600))
    os.utime(root / "job-3", (NOW - 60, NOW - 60))  # may belong to a job that just started
    connector = _connector(tmp_path, agent={"config": "/etc/bk.cfg", "build_root": str(root)})
    # job 4 runs under another name (squeue of this cycle did not show it), job 5 has ended
    squeue = _Squeue({4: JobState.RUNNING, 5: JobState.COMPLETED})
    connector.control = squeue  # type: ignore[assignment]
    alive = (_slurm(1, Ref("app", 1, _id(1))),)
    view = View(now=NOW, active=alive, squeue_ok=True, sacct_ok=True)
    connector._gone_paths = connector._find_gone_paths(view)
    assert squeue.asked == [[2, 4, 5]]
    actions = [a for a in _plan(connector, Remote(), active=alive) if a.kind == "prune"]
    assert [a.payload["path"] for a in actions] == [str(root / "job-2"), str(root / "job-5")]
    outcomes = connector.apply_many(actions)
    assert [o.status.value for o in outcomes] == ["done", "done"]
    assert sorted(p.name for p in root.iterdir()) == ["cache", "job-1", "job-3", "job-4",
                                                      "job-6", "job-7x"]
    assert (outside / "keep").exists()
    # squeue failing, or not read this cycle, prunes nothing
    failing = _Squeue({}, fail=True)
    connector.control = failing  # type: ignore[assignment]
    assert connector._find_gone_paths(view) == {}
    unread = View(now=NOW, active=(), squeue_ok=False)
    assert connector._find_gone_paths(unread) == {}
    # a path outside build_root is refused even if an action names it
    bad = actions[0].__class__("buildkite", "prune", "k", {"path": str(outside)}, "")
    assert connector.apply_many([bad])[0].status.value == "permanent"
    assert (outside / "keep").exists()


# Every job state Buildkite documents, and what it means for a pending and for a running Slurm
# job (the pending one waited 600 s, past taken_grace_seconds).
_STATE_DECISIONS = {
    # state: (pending Slurm job, running Slurm job)
    "pending": (None, None), "waiting": (None, None), "blocked": (None, None),
    "unblocked": (None, None), "limited": (None, None), "limiting": (None, None),
    "scheduled": (None, None),
    "assigned": ("cancel", None), "accepted": ("cancel", None), "running": ("cancel", None),
    "passed": ("cancel", None), "failed": ("cancel", None), "finished": ("cancel", None),
    "canceled": ("cancel", "signal"), "canceling": ("cancel", "signal"),
    "timed_out": ("cancel", "signal"), "timing_out": ("cancel", "signal"),
    "expired": ("cancel", "signal"), "skipped": ("cancel", "signal"),
    "broken": ("cancel", "signal"), "waiting_failed": ("cancel", "signal"),
    "blocked_failed": ("cancel", "signal"), "unblocked_failed": ("cancel", "signal"),
}


def test_every_documented_job_state_is_decided() -> None:
    from slurm_sync.connectors.buildkite import JOB_STATES
    from tests.emulators.buildkite import JOB_STATES as EMULATED

    assert set(_STATE_DECISIONS) == JOB_STATES
    assert EMULATED <= JOB_STATES


@pytest.mark.parametrize("state", sorted(_STATE_DECISIONS))
def test_each_job_state_cancels_a_pending_or_running_slurm_job_or_not(
    tmp_path: Path, state: str
) -> None:
    connector = _connector(tmp_path)
    ref = Ref("app", 7, _id(1))
    remote = Remote(complete=True, known={ref.job: BKJob(ref.job, state, "app", 7, (),
                                                          "running")},
                    taken_elsewhere=frozenset({"70"}))
    pending, running = _STATE_DECISIONS[state]
    plan = _plan(connector, remote, active=(_slurm(70, ref, JobState.PENDING),))
    assert [a.kind for a in plan] == ([pending] if pending else []), plan
    plan = _plan(connector, remote, active=(_slurm(71, ref),))
    assert [a.kind for a in plan] == ([running] if running else []), plan


def test_an_unknown_job_state_leaves_the_slurm_job_alone(tmp_path: Path) -> None:
    connector = _connector(tmp_path)
    ref = Ref("app", 7, _id(1))
    remote = Remote(complete=True, known={ref.job: BKJob(ref.job, "dematerialized", "app", 7)})
    assert _plan(connector, remote, active=(_slurm(70, ref, JobState.PENDING),)) == []
    assert _plan(connector, remote, active=(_slurm(71, ref),)) == []


def test_the_full_cancel_is_sent_once_while_slurm_ends_the_job(tmp_path: Path) -> None:
    """Once the cancel after the grace went out, the job shutting down (COMPLETING, KillWait)
    is left to Slurm: the cancel is not sent again every cycle, only when the job is still
    there cancel_resend_seconds later."""
    connector = _connector(tmp_path, cancel_resend_seconds=300)
    ref = Ref("app", 7, _id(1))
    remote = Remote(complete=True, known={ref.job: BKJob(ref.job, "canceled", "app", 7)})
    for state in (JobState.RUNNING, JobState.COMPLETING):
        running = _slurm(71, ref, state)
        key = _plan(connector, remote, active=(running,))[0].key
        signalled = {"signal": {key: NOW - 100}}
        delivered = {"signal": frozenset({key})}
        assert [a.kind for a in _plan(connector, remote, active=(running,), snapshot=Snapshot(
            delivered=delivered, delivered_at=signalled))] == ["cancel"]
        for ago in (1, 10, 45, 299):
            sent = Snapshot(delivered={**delivered, "cancel": frozenset({key})},
                            delivered_at={**signalled, "cancel": {key: NOW - ago}})
            assert _plan(connector, remote, active=(running,), snapshot=sent) == [], ago
        queued = Snapshot(delivered=delivered, delivered_at=signalled,
                          queued={"cancel": frozenset({key})})
        assert _plan(connector, remote, active=(running,), snapshot=queued) == []
        much_later = Snapshot(delivered={**delivered, "cancel": frozenset({key})},
                              delivered_at={**signalled, "cancel": {key: NOW - 300}})
        assert [a.kind for a in _plan(connector, remote, active=(running,),
                                      snapshot=much_later)] == ["cancel"]


def test_a_pending_cancel_is_not_sent_again_while_slurm_removes_the_job(tmp_path: Path) -> None:
    connector = _connector(tmp_path)
    ref = Ref("app", 7, _id(1))
    pending = _slurm(70, ref, JobState.PENDING)
    remote = Remote(complete=True, known={ref.job: BKJob(ref.job, "canceled", "app", 7)})
    key = _plan(connector, remote, active=(pending,))[0].key
    sent = Snapshot(delivered={"cancel": frozenset({key})}, delivered_at={"cancel": {key: NOW - 5}})
    assert _plan(connector, remote, active=(pending,), snapshot=sent) == []
    assert _plan(connector, remote, active=(pending,), snapshot=Snapshot(
        queued={"cancel": frozenset({key})})) == []


def test_a_sigterm_slurm_took_starts_the_grace_and_a_refused_one_is_retried(
    tmp_path: Path
) -> None:
    from slurm_sync.actions import Action, Status

    class Control:
        def __init__(self) -> None:
            self.asked: list[Any] = []

        def signal(self, ids: list[Any], sig: str) -> dict[Any, str | None]:
            self.asked.append((ids, sig))
            return {i: ("Access/permission denied" if i == 9 else None) for i in ids}

    connector = _connector(tmp_path)
    control = Control()
    connector.control = control  # type: ignore[assignment]
    actions = [Action("buildkite", "signal", f"c/{i}/x", {"slurm_id": str(i), "ref": "a/1/x"})
               for i in (8, 9)] + [Action("buildkite", "signal", "c/7_2/x",
                                          {"slurm_id": "7_2", "ref": "a/1/y"})]
    outcomes = connector.apply_many(actions)
    assert control.asked == [([8, 9, "7_2"], "TERM")]
    assert [o.status for o in outcomes] == [Status.DONE, Status.TRANSIENT, Status.DONE]
    assert "permission denied" in outcomes[1].detail


@pytest.mark.parametrize("mode", ["rest", "stacks"])
def test_a_token_in_a_slurm_variable_is_refused(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slurm_sync.errors import ConfigError

    monkeypatch.setenv("SLURM_BK_TOKEN", "bkua_s3cret")
    settings: dict[str, Any] = {
        "mode": mode, "queue": "slurm",
        "agent": {"config": "/etc/bk.cfg", "build_root": "/scratch/bk"},
        "batch_dir": "/scratch/bk/batches"}
    if mode == "rest":
        settings["rest"] = {"organization": "acme", "token": {"env": "SLURM_BK_TOKEN"}}
    else:
        settings["stacks"] = {"stack_key": "hpc", "token": {"env": "SLURM_BK_TOKEN"}}
    with pytest.raises(ConfigError) as err:
        BuildkiteConnector(settings)
    assert f"$.connectors.buildkite.{mode}.token" in str(err.value)
    assert "SLURM_BK_TOKEN" in str(err.value) and "bkua_s3cret" not in str(err.value)
