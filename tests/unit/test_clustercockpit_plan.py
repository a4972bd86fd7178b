"""What a cycle plans for cc-backend, from values only: a View (24.11 lab captures), a Snapshot
and an Observed, given to the pure ``plan`` (no connector, no emulator, no clock)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from slurm_sync.actions import Action
from slurm_sync.connector import Direction, Fact, Plan, Scope, Snapshot, View, delivery_key
from slurm_sync.connectors.clustercockpit import HostMap, Observed, RemoteRun, plan
from slurm_sync.connectors.clustercockpit.connector import SQUEUE_STATES
from slurm_sync.connectors.clustercockpit.plan import ADOPTED
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.parse import parse_sacct, parse_squeue

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "slurm" / "24.11"
NOW = 1795321999.0
CC = Observed(cluster="cc")


def _squeue(name: str) -> dict[int, Job]:
    return {j.job_id: j for j in parse_squeue((FIXTURES / name).read_bytes()).jobs}


def _sacct() -> dict[int, Job]:
    return {j.job_id: j for j in parse_sacct((FIXTURES / "sacct.json").read_bytes()).jobs}


def _view(active: tuple[Job, ...] = (), ended: tuple[Job, ...] = (), *,
          squeue_ok: bool = True) -> View:
    return View(now=NOW, active=active, ended=ended, squeue_ok=squeue_ok, sacct_ok=True)


def _plan(view: View, snapshot: Snapshot = Snapshot(),  # noqa: B008 - frozen
          direction: Direction = Direction.BOTH, scope: Scope = Scope(),  # noqa: B008
          observed: Observed = CC, hosts: HostMap = HostMap()) -> Plan:  # noqa: B008
    return plan(view, snapshot, direction, scope, observed, hosts)


def _rows(actions: tuple[Action, ...]) -> list[tuple[str, str]]:
    return [(a.kind, a.key) for a in actions]


def test_a_short_job_gets_start_then_stop_in_one_cycle() -> None:
    result = _plan(_view(ended=tuple(_sacct().values())), scope=Scope(job_ids=(14,)))
    assert _rows(result.actions) == [("start", "lab2411/14/1795321838"),
                                     ("stop", "lab2411/14/1795321838")]
    assert result.actions[1].payload["jobState"] == "completed" and result.facts == ()


def test_pending_jobs_and_jobs_that_never_ran_are_not_started() -> None:
    active = tuple(_squeue("squeue-running.json").values())
    result = _plan(_view(active), direction=Direction.START)
    started = {a.payload["job"]["jobId"] for a in result.actions}
    assert 1 not in started and 7 not in started and 8 not in started
    assert {3, 4, 6} <= started


def test_delivered_runs_are_not_started_again_and_stops_need_a_start() -> None:
    jobs = _sacct()
    snapshot = Snapshot(delivered={"start": frozenset({delivery_key(jobs[3])})})
    result = _plan(_view(ended=(jobs[3], jobs[4])), snapshot, Direction.STOP)
    assert [(a.kind, a.payload["jobId"]) for a in result.actions] == [("stop", 3)]


def test_a_short_job_still_in_squeue_gets_its_cores_from_there() -> None:
    """squeue holds ended jobs for MinJobAge: their start payload takes the cores from it,
    while the stop comes from sacct."""
    finished = tuple(_squeue("squeue-finished.json").values())
    result = _plan(_view(finished, tuple(_sacct().values())), scope=Scope(job_ids=(15,)))
    start, stop = result.actions
    assert start.payload["job"]["resources"] == [{"hostname": "lab2411n1", "hwthreads": [1]}]
    assert stop.payload["jobState"] == "failed" and stop.payload["stopTime"] == 1795321839
    assert "PD" not in SQUEUE_STATES and "CD" in SQUEUE_STATES


def test_a_run_that_ended_before_the_window_is_stopped_on_squeues_word() -> None:
    """squeue still holds ended jobs for MinJobAge; one that ended before the sacct window
    must get its stop from squeue, or its record stays running."""
    finished = tuple(_squeue("squeue-finished.json").values())
    result = _plan(_view(finished), scope=Scope(job_ids=(16,)))
    assert [(a.kind, a.payload.get("jobState")) for a in result.actions] == [
        ("start", None), ("stop", "failed")]


def test_a_run_only_sacct_shows_running_waits_for_squeue() -> None:
    running = replace(_sacct()[14], state=JobState.RUNNING, end_time=None, source="sacct")
    assert _plan(_view(ended=(running,))).actions == ()
    ended = _sacct()[14]
    assert _plan(_view(ended=(ended,), squeue_ok=False)).actions == ()


def test_a_run_that_started_after_the_cycle_began_waits_for_the_next_squeue() -> None:
    """Seed 1 of the long chaos run: a job started and was cancelled in the same second, after
    the cycle's squeue and before its sacct. squeue (MinJobAge) lists it next cycle with its
    cores; sending it from sacct alone said, falsely, that it had left squeue."""
    ended = _sacct()[14]
    assert ended.start_time is not None
    late = _view(ended=(ended,))
    late = replace(late, now=float(ended.start_time) - 0.4)
    assert _plan(late).actions == ()
    gone = replace(late, now=float(ended.start_time) + 400)
    start = _plan(gone).actions[0]
    assert start.kind == "start" and "left squeue" in start.payload["job"]["metaData"][
        "slurmSyncNotes"]


def test_a_run_cc_backend_runs_is_adopted_as_a_fact_and_its_end_stopped() -> None:
    """Reconcile: cc-backend lists the run running, so its start is a fact recorded as
    delivered (nothing sent), and Slurm's end of it is a stop."""
    job = _sacct()[14]
    observed = Observed(cluster="cc", remote=(RemoteRun(14, job.start_time or 0, "cc"),))
    result = _plan(_view(ended=(job,)), scope=Scope(job_ids=(14,)), observed=observed)
    assert result.facts == (Fact("start", delivery_key(job), ADOPTED),)
    assert _rows(result.actions) == [("stop", delivery_key(job))]


def test_a_run_cc_backend_runs_that_slurm_only_knows_by_lookup_is_stopped() -> None:
    """Runs cc-backend lists that neither squeue nor the window hold come from observe's
    sacct lookup by job id: an ended one is stopped, with sacct's end."""
    job = _sacct()[3]
    observed = Observed(cluster="cc", remote=(RemoteRun(3, job.start_time or 0, "cc"),),
                        looked_up=(job,))
    snapshot = Snapshot(delivered={"start": frozenset({delivery_key(job)})})
    result = _plan(_view(), snapshot, observed=observed)
    assert _rows(result.actions) == [("stop", delivery_key(job))]
    assert result.actions[0].payload["cluster"] == "cc"


def test_a_run_no_host_of_which_matches_node_regex_is_refused_with_its_stop() -> None:
    """No host left: never an empty ``resources``; the start is a fact refused for good, and
    so is the stop of that run (cc-backend has nothing to stop)."""
    job = _sacct()[14]
    result = _plan(_view(ended=(job,)), scope=Scope(job_ids=(14,)),
                   hosts=HostMap.from_settings({"node_regex": "^gpu"}))
    key = delivery_key(job)
    assert result.actions == ()
    assert result.facts == (
        Fact("start", key, "not sent: no host matches node_regex", refused=True),
        Fact("stop", key, "not sent: its start was refused", refused=True))


def test_what_observe_found_decides_version_and_cluster_of_the_payloads() -> None:
    job = _sacct()[14]
    view = _view(ended=(job,))
    for version, field in (("1.4", "exclusive"), ("1.5", "shared")):
        observed = Observed(api_version=version, cluster="fritz")
        start = _plan(view, scope=Scope(job_ids=(14,)), observed=observed).actions[0]
        assert field in start.payload["job"] and start.payload["job"]["cluster"] == "fritz"
    # no cluster name known: each job's own
    start = _plan(view, scope=Scope(job_ids=(14,)), observed=Observed()).actions[0]
    assert start.payload["job"]["cluster"] == job.cluster


def test_a_start_names_the_earlier_runs_of_its_job_for_apply() -> None:
    """``apply`` sends the runs of a job in order: each start says which earlier runs of its
    job slurm-sync started (``ours``) and which it has yet to (``waits_for``: in the outbox, or
    planned with it)."""
    base = _sacct()[14]
    start = base.start_time or 0
    runs = [replace(base, start_time=start + n * 100, end_time=start + n * 100 + 10)
            for n in range(4)]
    snapshot = Snapshot(delivered={"start": frozenset({delivery_key(runs[0])})},
                        queued={"start": frozenset({delivery_key(runs[1])})})
    view = replace(_view(ended=tuple(runs)), now=float(start + 1000))  # all four have ended
    result = _plan(view, snapshot, Direction.START)
    by_key = {a.key: a.payload for a in result.actions}
    assert list(by_key) == [delivery_key(runs[2]), delivery_key(runs[3])]
    assert by_key[delivery_key(runs[2])]["ours"] == [start]
    assert by_key[delivery_key(runs[2])]["waits_for"] == [start + 100]
    assert by_key[delivery_key(runs[3])]["waits_for"] == [start + 100, start + 200]


def test_plan_is_the_same_for_the_same_values() -> None:
    view = _view(tuple(_squeue("squeue-finished.json").values()), tuple(_sacct().values()))
    assert _plan(view) == _plan(view)
