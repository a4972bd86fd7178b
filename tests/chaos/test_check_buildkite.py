"""The Buildkite run's checks catch what they claim to, on a made-up outcome (no processes):
a perfect one passes; a job submitted twice, a job lost, a cancelled job's Slurm job left
pending, a wanted job cancelled, a job invented, a failed scancel in a cycle that exits 0 each
fail their own assertion."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

from tests.chaos.check import BUILDKITE_ASSERTIONS, check, figures
from tests.chaos.harness import Cycle, Result
from tests.chaos.timeline import Scenario, build_timeline

T0 = 1_800_000_000.0
PID = 4242


def _job(n: int, state: str, times: list[tuple[float, str]], queue: str = "slurm"
         ) -> dict[str, Any]:
    return {"id": str(uuid.UUID(int=n)), "build_id": f"b{n}", "build": n, "pipeline": "app",
            "rules": [f"queue={queue}"], "state": state, "queue": queue,
            "timeline": [[T0 + at, "state", value] for at, value in times]}


RAN = [(1, "scheduled"), (5, "assigned"), (5, "accepted"), (5, "running"), (10, "passed")]


def _task(job: dict[str, Any], task: int | None, job_id: int, **kw: Any) -> dict[str, Any]:
    base = {"task": task, "job_id": job_id, "start": T0 + 5, "end": T0 + 10,
            "state": "COMPLETED", "exit_code": 0, "signal": 0, "cancelled": None,
            "signalled": None, "wait": 1.0, "runtime": 5.0, "hold": False,
            "ref": f"{job['pipeline']}/{job['build']}/{job['id']}"}
    return {**base, **kw}


def _entry(job_id: int, at: float, tasks: list[dict[str, Any]], comment: str
           ) -> dict[str, Any]:
    return {"job_id": job_id, "t": T0 + at, "args": ["--parsable", "--job-name=buildkite"],
            "name": "buildkite", "comment": comment, "script": "#!/bin/bash\n",
            "array_size": len(tasks) if tasks[0]["task"] is not None else 0, "ppid": PID,
            "fault": "", "partition": "main", "user": "ci", "account": "ci", "time_limit": 10,
            "cpus": 1, "tasks": tasks}


def _perfect() -> Result:
    """J1 ran alone; J2 and J3 ran as an array; J4's build was cancelled while its Slurm job
    pended, and slurm-sync scancel'd it; J5 is another queue's and was never submitted."""
    j1, j2, j3 = _job(1, "passed", RAN), _job(2, "passed", RAN), _job(3, "passed", RAN)
    j4 = _job(4, "canceled", [(1, "scheduled"), (6, "canceled")])
    j5 = _job(5, "scheduled", [(1, "scheduled")], queue="elsewhere")
    submitted = [
        _entry(100000, 2, [_task(j1, None, 100000)], f"bk:app/1/{j1['id']}"),
        _entry(100001, 3, [_task(j2, 0, 100002), _task(j3, 1, 100001)], "bk-batch:x"),
        _entry(100003, 3, [_task(j4, None, 100003, start=None, end=T0 + 8, state="CANCELLED",
                                 cancelled=T0 + 8)], f"bk:app/4/{j4['id']}"),
    ]
    log = [{"t": T0 + 5, "slurm_id": sid, "job": job["id"], "what": "acquire", "status": 200,
            "state": "accepted", "detail": ""}
           for sid, job in (("100000", j1), ("100001_0", j2), ("100001_1", j3))]
    calls = [{"t": e["t"], "t_end": e["t"] + 0.1, "cmd": "sbatch", "args": e["args"],
              "ppid": PID, "fault": "", "rc": 0, "job_id": e["job_id"]} for e in submitted]
    calls.append({"t": T0 + 8, "t_end": T0 + 8.1, "cmd": "scancel", "args": ["100003"],
                  "ppid": PID, "fault": "", "rc": 0})
    scenario = Scenario.short(seed=11, service="buildkite")
    return Result(
        scenario=scenario, timeline=build_timeline(Scenario.short(seed=11, jobs=5), T0),
        work=Path("/nowhere"), api_version="", records=[j1, j2, j3, j4, j5], requests=[],
        calls=calls, deliveries=[], outbox=[], final_status="", final_status_code=0,
        windows={}, kills=0, wall=1.0, drained=True, service="buildkite",
        cycles=[Cycle(0, PID, T0 + 1.5, "active", ended=T0 + 9, exit_code=0)],
        extra={"submitted": submitted, "agent_log": log, "builds": []})


def _failed(result: Result) -> dict[str, int]:
    return {name: len(items) for name, items in check(result).items() if items}


def test_a_perfect_outcome_passes_every_assertion() -> None:
    result = _perfect()
    findings = check(result)
    assert set(findings) == set(BUILDKITE_ASSERTIONS)
    assert not any(findings.values()), findings
    numbers = figures(result, findings)
    assert numbers["passed"] and numbers["slurm_jobs"] == 4 and numbers["arrays"] == 1
    assert numbers["cancelled_before_running"] == 1 and numbers["bk_jobs_ours"] == 4


def test_a_job_submitted_twice_is_a_duplicate() -> None:
    result = _perfect()
    entries = result.extra["submitted"]
    again = copy.deepcopy(entries[0])
    again.update(job_id=100010, t=T0 + 7)
    again["tasks"][0].update(job_id=100010, start=T0 + 8, end=T0 + 8, state="FAILED",
                             exit_code=27)
    entries.append(again)
    result.calls.append({"t": T0 + 7, "t_end": T0 + 7.1, "cmd": "sbatch", "args": [],
                         "ppid": PID, "fault": "", "rc": 0, "job_id": 100010})
    assert _failed(result) == {"duplicated": 1}
    (finding,) = check(result)["duplicated"]
    assert "100000" in finding.detail and "100010" in finding.detail


def test_a_job_never_submitted_or_never_run_is_lost() -> None:
    result = _perfect()
    result.extra["submitted"].pop(0)  # J1: no Slurm job, yet Buildkite says it passed...
    result.records[0].update(state="scheduled", timeline=[[T0 + 1, "state", "scheduled"]])
    assert _failed(result) == {"lost": 1}
    assert "never" in check(result)["lost"][0].detail


def test_a_cancelled_jobs_slurm_job_left_pending_is_found() -> None:
    result = _perfect()
    task = result.extra["submitted"][2]["tasks"][0]
    task.update(end=None, state=None, cancelled=None, held=T0 + 4)
    result.calls.pop()  # no scancel
    assert _failed(result) == {"left_running": 1}
    assert "still pending" in check(result)["left_running"][0].detail


def test_a_scancel_of_a_wanted_job_or_of_no_job_of_ours_is_wrong() -> None:
    result = _perfect()
    # J1's own running Slurm job, cancelled while its agent ran it
    result.calls.append({"t": T0 + 7, "t_end": T0 + 7.1, "cmd": "scancel",
                         "args": ["--ctld", "--signal=TERM", "--full", "100000"], "ppid": PID,
                         "fault": "", "rc": 0})
    # the array's task 1 while its job was still scheduled; and a job that is not ours
    result.calls.append({"t": T0 + 2, "t_end": T0 + 2.1, "cmd": "scancel",
                         "args": ["100001_1", "4711"], "ppid": PID, "fault": "", "rc": 0})
    assert _failed(result) == {"wrong_cancel": 3}
    details = " | ".join(f.detail for f in check(result)["wrong_cancel"])
    assert "running by this job's agent" in details and "scheduled" in details
    assert "4711: no job of ours" in details
    # a scancel that failed changed nothing; one of a job already over neither
    result.calls[-2:] = [{**c, "fault": "fail", "rc": 1} for c in result.calls[-2:]]
    result.cycles[0].exit_code = 1  # (a cycle whose scancel failed does not exit 0)
    result.calls.append({"t": T0 + 20, "t_end": T0 + 20.1, "cmd": "scancel",
                         "args": ["100000"], "ppid": PID, "fault": "", "rc": 0})
    assert _failed(result) == {}


def test_a_slurm_job_for_no_job_or_for_another_queue_is_invented() -> None:
    result = _perfect()
    other = result.records[4]
    result.extra["submitted"].append(_entry(100020, 4, [
        _task(other, None, 100020, start=T0 + 5, end=T0 + 5, state="FAILED", exit_code=27)],
        f"bk:app/5/{other['id']}"))
    ghost = _task(result.records[0], None, 100021, ref=f"app/9/{uuid.UUID(int=99)}")
    result.extra["submitted"].append(_entry(100021, 4, [ghost], "bk:app/9/x"))
    assert _failed(result) == {"invented": 2}


def test_a_failed_scancel_in_a_cycle_that_exits_0_or_shows_no_outbox() -> None:
    result = _perfect()
    result.calls.append({"t": T0 + 4, "t_end": T0 + 4.1, "cmd": "scancel",
                         "args": ["100003"], "ppid": PID, "fault": "fail", "rc": 1})
    result.cycles[0].status = ("│ buildkite │ 2 s ago │ 0 │ - │ 5 │ 0 │ - │ - │ - │ - │\n")
    result.cycles[0].status_done = T0 + 9.5
    assert _failed(result) == {"exit_codes": 2}
    # a status read after a later cycle ran (which may have sent the retries) proves nothing
    result.cycles.append(Cycle(1, PID + 1, T0 + 9.2, "active", ended=T0 + 9.4, exit_code=0))
    assert _failed(result) == {"exit_codes": 1}
    result.cycles.pop()
    result.cycles[0].exit_code = 1
    result.cycles[0].status = result.cycles[0].status.replace("│ 0 │ - │ 5", "│ 1 │ - │ 5")
    assert _failed(result) == {}
    # the status after the drain: nothing waits, nothing behind
    result.final_status = result.cycles[0].status + "behind: buildkite: an action has waited\n"
    assert _failed(result) == {"exit_codes": 1}
    result.final_status = result.final_status.splitlines()[0].replace("│ 1 │", "│ 0 │")
    assert _failed(result) == {}


def test_only_the_views_squeue_failing_asks_for_exit_3() -> None:
    """A connector's own squeue after the view's (the Buildkite connector asks again about
    jobs it would cancel as taken) failing leaves the cycle's exit code alone."""
    result = _perfect()
    view = {"t": T0 + 1.6, "t_end": T0 + 1.7, "cmd": "squeue", "ppid": PID, "fault": "",
            "rc": 0, "args": ["--json", "--states=PENDING,RUNNING", "--name=buildkite"]}
    again = {**view, "t": T0 + 2, "rc": 1, "fault": "fail",
             "args": ["--json", "--states=all", "--jobs=100000"]}
    result.calls += [view, again]
    assert _failed(result) == {}
    result.calls[-2] = {**view, "rc": 1, "fault": "fail"}
    assert _failed(result) == {"exit_codes": 1}
