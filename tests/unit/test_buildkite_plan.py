"""The Buildkite connector's decisions, pure: which Slurm job runs which Buildkite job, what is
submitted (caps, pauses, resubmits, refusals) and what is cancelled (and when). Every plan here
is ``plan(view, snapshot, direction, scope, observed, settings)`` called with values only."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.actions import Action, Status
from slurm_sync.connector import Direction, Fact, Plan, Scope, Snapshot, View
from slurm_sync.connectors.buildkite import (
    BKJob,
    BuildkiteConnector,
    Observed,
    Ref,
    Remote,
    Settings,
    job_script,
    matches_queue,
    plan,
    runs_of,
)
from slurm_sync.connectors.buildkite.cancel import stop_all
from slurm_sync.connectors.buildkite.prune import find_gone_paths, remove
from slurm_sync.errors import SlurmCommandError
from slurm_sync.slurm.model import ExitCode, Job, JobState

NOW = 1_795_500_000.0


def _id(n: int) -> str:
    return str(uuid.UUID(int=n))


def _settings(mode: str = "rest", **extra: Any) -> Settings:
    section = ({"rest": {"organization": "acme", "token": {"file": "/etc/bk-token"}}}
               if mode == "rest" else
               {"stacks": {"stack_key": "hpc", "token": {"file": "/etc/bk-token"}}})
    return Settings.parse({
        "mode": mode, "queue": "slurm", **section,
        "agent": {"config": "/etc/bk.cfg", "build_root": "/scratch/bk"},
        "batch_dir": "/scratch/bk/batches",
        "cancel_grace_seconds": 60, "taken_grace_seconds": 120, **extra,
    })


def _slurm(job_id: int, ref: Ref, state: JobState = JobState.RUNNING, **kw: Any) -> Job:
    return Job(job_id=job_id, name="buildkite", state=state, comment=f"bk:{ref.text()}",
               submit_time=int(NOW) - 600, **kw)


def _full(settings: Settings, remote: Remote, active: tuple[Job, ...] = (),
          ended: tuple[Job, ...] = (), snapshot: Snapshot | None = None,
          taken: frozenset[str] = frozenset(), squeue_ok: bool = True,
          gone: dict[int, float] | None = None) -> Plan:
    """The plan of a cycle whose squeue (``active``) and sacct (``ended``) said this, and
    whose observe found ``remote`` (and ``taken``, ``gone``)."""
    view = View(now=NOW, active=active, ended=ended, squeue_ok=squeue_ok, sacct_ok=True)
    observed = Observed(remote=remote, taken_elsewhere=taken, gone_paths=gone or {},
                        cluster="c")
    return plan(view, snapshot or Snapshot(), Direction.BOTH, Scope(), observed, settings)


def _plan(settings: Settings, remote: Remote, active: tuple[Job, ...] = (),
          ended: tuple[Job, ...] = (), snapshot: Snapshot | None = None,
          taken: frozenset[str] = frozenset()) -> list[Action]:
    """The actions of such a plan, which holds no fact."""
    result = _full(settings, remote, active, ended, snapshot, taken)
    assert result.facts == ()
    return list(result.actions)


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


def test_scheduled_jobs_are_submitted_by_priority_within_the_caps() -> None:
    settings = _settings(max_in_flight=3, pipeline_limits={"big": 1})
    running = _slurm(50, Ref("app", 1, _id(90)))
    remote = Remote(complete=True, scheduled=(
        _scheduled(1), _scheduled(2, priority=5), _scheduled(3, pipeline="big"),
        _scheduled(4, pipeline="big"), _scheduled(5)))
    actions = _plan(settings, remote, active=(running,))
    submitted = [a.key for a in actions if a.kind == "submit"]
    # 1 in flight + 2 more = max_in_flight 3; priority first; one 'big' at most
    assert submitted == [f"{_id(2)}#1", f"{_id(1)}#1"]
    assert all("--partition" not in " ".join(a.payload["options"]) for a in actions)


def test_a_submit_says_when_it_was_planned_and_which_slurm_jobs_ran_its_job_before() -> None:
    """What a submit sent again from the outbox needs to tell its own Slurm job from those of
    earlier submits (submit.py): the cycle's time and the Slurm jobs of that Buildkite job
    sacct showed ended."""
    job = _scheduled(1)
    died = _slurm(61, job.ref, JobState.FAILED, exit_code=ExitCode(1))
    once = Snapshot(delivered={"submit": frozenset({f"{job.id}#1"})})
    (first,) = _plan(_settings(), Remote(complete=True, scheduled=(job,)))
    assert first.payload["planned_at"] == NOW and first.payload["earlier"] == []
    (again,) = _plan(_settings(), Remote(complete=True, scheduled=(job,)), ended=(died,),
                     snapshot=once)
    assert again.key == f"{job.id}#2" and again.payload["earlier"] == ["61"]
    assert "retry" not in again.payload


def test_nothing_is_submitted_while_dispatch_is_paused_or_buildkite_unread() -> None:
    settings = _settings()
    assert _plan(settings, Remote(complete=True, paused=True, scheduled=(_scheduled(1),))) == []
    assert _plan(settings, Remote(complete=False, scheduled=(_scheduled(1),))) == []


def test_a_job_already_in_slurm_is_not_submitted_again() -> None:
    job = _scheduled(1)
    pending = _slurm(60, job.ref, JobState.PENDING)
    assert _plan(_settings(), Remote(complete=True, scheduled=(job,)), active=(pending,)) == []


@pytest.mark.parametrize("mode", ["rest", "stacks"])
def test_resubmits_are_bounded_and_exit_27_stops_them(mode: str) -> None:
    settings = _settings(mode, max_submits=2)
    job = _scheduled(1)
    remote = Remote(complete=True, scheduled=(job,))
    died = _slurm(61, job.ref, JobState.FAILED, exit_code=ExitCode(1))
    once = Snapshot(delivered={"submit": frozenset({f"{job.id}#1"})})
    actions = _plan(settings, remote, ended=(died,), snapshot=once)
    assert [a.key for a in actions] == [f"{job.id}#2"] and "submit 2" in actions[0].reason
    twice = Snapshot(delivered={"submit": frozenset({f"{job.id}#1", f"{job.id}#2"})})
    result = _full(settings, remote, ended=(died,), snapshot=twice)
    # refused for good: a fact, nothing submitted; in mode stacks Buildkite is told
    (fact,) = result.facts
    assert (fact.kind, fact.key, fact.refused) == ("submit", f"{job.id}#refused", True)
    assert "never acquired" in fact.detail
    if mode == "stacks":
        assert [(a.kind, a.key, a.payload["job"]) for a in result.actions] == [
            ("finish", f"{job.id}#refused", job.id)]
        assert "never acquired" in result.actions[0].payload["reason"]
    else:
        assert result.actions == ()
    taken = _slurm(62, job.ref, JobState.COMPLETED, exit_code=ExitCode(27))
    assert _plan(settings, remote, ended=(taken,), snapshot=once) == []
    reported = Snapshot(failed={"submit": frozenset({f"{job.id}#refused"})})
    assert _plan(settings, remote, snapshot=reported) == []


@pytest.mark.parametrize("mode", ["rest", "stacks"])
def test_a_forbidden_option_is_refused_with_its_reason(mode: str) -> None:
    result = _full(_settings(mode), Remote(complete=True, scheduled=(
        _scheduled(1, "slurm_export=ALL"),)))
    (fact,) = result.facts
    assert fact == Fact("submit", f"{_id(1)}#refused", fact.detail, refused=True)
    assert "--export is never taken from a pipeline" in fact.detail
    finishes = [a.payload["reason"] for a in result.actions if a.kind == "finish"]
    assert [a.kind for a in result.actions] == (["finish"] if mode == "stacks" else [])
    assert all("--export is never taken from a pipeline" in r for r in finishes)


@pytest.mark.parametrize(("state", "build_state", "kind"), [
    ("canceled", "canceled", "cancel"),
    ("timed_out", "failed", "cancel"),
    ("scheduled", "passed", "cancel"),
    ("running", "running", None),
    ("scheduled", "running", None),
])
def test_pending_jobs_are_cancelled_on_buildkites_word(
    state: str, build_state: str, kind: str | None
) -> None:
    ref = Ref("app", 7, _id(1))
    pending = _slurm(70, ref, JobState.PENDING)
    remote = Remote(complete=True, known={ref.job: BKJob(ref.job, state, "app", 7, (),
                                                          build_state)})
    actions = _plan(_settings(), remote, active=(pending,), taken=frozenset({"70"}))
    if state == "running":
        # another agent holds it: after taken_grace (the job waited 600 s > 120 s), and a
        # squeue after Buildkite's answer still showed it pending (taken_elsewhere)
        assert [a.kind for a in actions] == ["cancel"] and "another agent" in actions[0].reason
    else:
        assert [a.kind for a in actions] == ([kind] if kind else [])


def test_a_running_agent_gets_sigterm_then_a_cancel_after_the_grace() -> None:
    settings = _settings()
    ref = Ref("app", 7, _id(1))
    running = _slurm(71, ref)
    remote = Remote(complete=True, known={ref.job: BKJob(ref.job, "canceling", "app", 7)})
    first = _plan(settings, remote, active=(running,))
    assert [a.kind for a in first] == ["signal"]
    key = first[0].key
    soon = Snapshot(delivered={"signal": frozenset({key})},
                    delivered_at={"signal": {key: NOW - 10}})
    assert _plan(settings, remote, active=(running,), snapshot=soon) == []
    later = Snapshot(delivered={"signal": frozenset({key})},
                     delivered_at={"signal": {key: NOW - 61}})
    assert [a.kind for a in _plan(settings, remote, active=(running,), snapshot=later)] == [
        "cancel"]


def test_no_word_from_buildkite_means_no_cancel() -> None:
    settings = _settings()
    running = _slurm(72, Ref("app", 7, _id(1)))
    assert _plan(settings, Remote(complete=True), active=(running,)) == []
    known = Remote(complete=True, known={_id(1): BKJob(_id(1), "canceled")})
    assert _full(settings, known, active=(running,), squeue_ok=False) == Plan()


def test_the_connector_plans_from_what_it_is_given_only(tmp_path: Path) -> None:
    """The connector's plan is the pure function's: no state of its own, and without an
    observed value nothing that needs Buildkite's word."""
    token = tmp_path / "token"
    token.write_text("bkua_x\n")
    token.chmod(0o600)
    connector = BuildkiteConnector({
        "mode": "rest", "queue": "slurm",
        "rest": {"url": "http://127.0.0.1:9", "organization": "acme",
                 "token": {"file": str(token)}},
        "agent": {"config": "/etc/bk.cfg", "build_root": "/scratch/bk"},
        "batch_dir": "/scratch/bk/batches"})
    ref = Ref("app", 7, _id(1))
    view = View(now=NOW, active=(_slurm(70, ref, JobState.PENDING),), squeue_ok=True,
                sacct_ok=True)
    remote = Remote(complete=True, known={ref.job: BKJob(ref.job, "canceled", "app", 7)},
                    scheduled=(_scheduled(2),))
    observed = Observed(remote=remote, cluster="c")
    result = connector.plan(view, Snapshot(), Direction.BOTH, Scope(), observed=observed)
    assert result == plan(view, Snapshot(), Direction.BOTH, Scope(), observed,
                          connector.config)
    assert sorted(a.kind for a in result.actions) == ["cancel", "submit"]
    assert connector.plan(view, Snapshot(), Direction.BOTH, Scope()) == Plan()
    connector.close()


def test_the_job_script_quotes_config_and_checks_the_job_id() -> None:
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
    """observe finds them (prune.find_gone_paths), plan plans them (pure), apply removes
    them (prune.remove)."""
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
    settings = _settings(agent={"config": "/etc/bk.cfg", "build_root": str(root)})
    # job 4 runs under another name (squeue of this cycle did not show it), job 5 has ended
    squeue = _Squeue({4: JobState.RUNNING, 5: JobState.COMPLETED})
    alive = (_slurm(1, Ref("app", 1, _id(1))),)
    view = View(now=NOW, active=alive, squeue_ok=True, sacct_ok=True)
    gone = find_gone_paths(view, settings.agent, squeue)  # type: ignore[arg-type]
    assert squeue.asked == [[2, 4, 5]]
    result = _full(settings, Remote(), active=alive, gone=gone)
    actions = [a for a in result.actions if a.kind == "prune"]
    assert [a.payload["path"] for a in actions] == [str(root / "job-2"), str(root / "job-5")]
    assert [a.key for a in actions] == [f"c/2/{int(NOW - 3600)}", f"c/5/{int(NOW - 3600)}"]
    # pruned once: a removal recorded is not planned again
    done = Snapshot(delivered={"prune": frozenset({actions[0].key})})
    assert [a.key for a in _full(settings, Remote(), active=alive, gone=gone,
                                 snapshot=done).actions] == [actions[1].key]
    # nothing is pruned from a cycle whose squeue failed
    assert _full(settings, Remote(), active=alive, gone=gone, squeue_ok=False) == Plan()
    outcomes = [remove(a, settings.agent.build_root) for a in actions]
    assert [o.status.value for o in outcomes] == ["done", "done"]
    assert sorted(p.name for p in root.iterdir()) == ["cache", "job-1", "job-3", "job-4",
                                                      "job-6", "job-7x"]
    assert (outside / "keep").exists()
    # squeue failing, or not read this cycle, prunes nothing
    failing = _Squeue({}, fail=True)
    assert find_gone_paths(view, settings.agent, failing) == {}  # type: ignore[arg-type]
    unread = View(now=NOW, active=(), squeue_ok=False)
    assert find_gone_paths(unread, settings.agent, squeue) == {}  # type: ignore[arg-type]
    # a path outside build_root is refused even if an action names it
    bad = Action("buildkite", "prune", "k", {"path": str(outside)}, "")
    assert remove(bad, settings.agent.build_root).status.value == "permanent"
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
def test_each_job_state_cancels_a_pending_or_running_slurm_job_or_not(state: str) -> None:
    settings = _settings()
    ref = Ref("app", 7, _id(1))
    remote = Remote(complete=True, known={ref.job: BKJob(ref.job, state, "app", 7, (),
                                                          "running")})
    pending, running = _STATE_DECISIONS[state]
    taken = frozenset({"70"})
    actions = _plan(settings, remote, active=(_slurm(70, ref, JobState.PENDING),), taken=taken)
    assert [a.kind for a in actions] == ([pending] if pending else []), actions
    actions = _plan(settings, remote, active=(_slurm(71, ref),), taken=taken)
    assert [a.kind for a in actions] == ([running] if running else []), actions


def test_an_unknown_job_state_leaves_the_slurm_job_alone() -> None:
    settings = _settings()
    ref = Ref("app", 7, _id(1))
    remote = Remote(complete=True, known={ref.job: BKJob(ref.job, "dematerialized", "app", 7)})
    assert _plan(settings, remote, active=(_slurm(70, ref, JobState.PENDING),)) == []
    assert _plan(settings, remote, active=(_slurm(71, ref),)) == []


def test_the_full_cancel_is_sent_once_while_slurm_ends_the_job() -> None:
    """Once the cancel after the grace went out, the job shutting down (COMPLETING, KillWait)
    is left to Slurm: the cancel is not sent again every cycle, only when the job is still
    there cancel_resend_seconds later."""
    settings = _settings(cancel_resend_seconds=300)
    ref = Ref("app", 7, _id(1))
    remote = Remote(complete=True, known={ref.job: BKJob(ref.job, "canceled", "app", 7)})
    for state in (JobState.RUNNING, JobState.COMPLETING):
        running = _slurm(71, ref, state)
        key = _plan(settings, remote, active=(running,))[0].key
        signalled = {"signal": {key: NOW - 100}}
        delivered = {"signal": frozenset({key})}
        assert [a.kind for a in _plan(settings, remote, active=(running,), snapshot=Snapshot(
            delivered=delivered, delivered_at=signalled))] == ["cancel"]
        for ago in (1, 10, 45, 299):
            sent = Snapshot(delivered={**delivered, "cancel": frozenset({key})},
                            delivered_at={**signalled, "cancel": {key: NOW - ago}})
            assert _plan(settings, remote, active=(running,), snapshot=sent) == [], ago
        queued = Snapshot(delivered=delivered, delivered_at=signalled,
                          queued={"cancel": frozenset({key})})
        assert _plan(settings, remote, active=(running,), snapshot=queued) == []
        much_later = Snapshot(delivered={**delivered, "cancel": frozenset({key})},
                              delivered_at={**signalled, "cancel": {key: NOW - 300}})
        assert [a.kind for a in _plan(settings, remote, active=(running,),
                                      snapshot=much_later)] == ["cancel"]


def test_a_pending_cancel_is_not_sent_again_while_slurm_removes_the_job() -> None:
    settings = _settings()
    ref = Ref("app", 7, _id(1))
    pending = _slurm(70, ref, JobState.PENDING)
    remote = Remote(complete=True, known={ref.job: BKJob(ref.job, "canceled", "app", 7)})
    key = _plan(settings, remote, active=(pending,))[0].key
    sent = Snapshot(delivered={"cancel": frozenset({key})}, delivered_at={"cancel": {key: NOW - 5}})
    assert _plan(settings, remote, active=(pending,), snapshot=sent) == []
    assert _plan(settings, remote, active=(pending,), snapshot=Snapshot(
        queued={"cancel": frozenset({key})})) == []


def test_a_sigterm_slurm_took_starts_the_grace_and_a_refused_one_is_retried() -> None:
    class Control:
        def __init__(self) -> None:
            self.asked: list[Any] = []

        def signal(self, ids: list[Any], sig: str) -> dict[Any, str | None]:
            self.asked.append((ids, sig))
            return {i: ("Access/permission denied" if i == 9 else None) for i in ids}

    control = Control()
    actions = [Action("buildkite", "signal", f"c/{i}/x", {"slurm_id": str(i), "ref": "a/1/x"})
               for i in (8, 9)] + [Action("buildkite", "signal", "c/7_2/x",
                                          {"slurm_id": "7_2", "ref": "a/1/y"})]
    outcomes = stop_all(control, actions, signal=True)  # type: ignore[arg-type]
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
    for make in (BuildkiteConnector, Settings.parse):
        with pytest.raises(ConfigError) as err:
            make(settings)
        assert f"$.connectors.buildkite.{mode}.token" in str(err.value)
        assert "SLURM_BK_TOKEN" in str(err.value) and "bkua_s3cret" not in str(err.value)
