"""The chaos suite's checks catch what they claim to, on made-up outcomes (no processes, fast)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.connectors.clustercockpit import cc_state
from slurm_sync.slurm.model import JobState
from tests.chaos.check import ASSERTIONS, check
from tests.chaos.harness import CC_CLUSTER, Cycle, Result
from tests.chaos.timeline import Scenario, Timeline, build_timeline

T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def timeline() -> Timeline:
    scenario = Scenario.short(seed=11, jobs=80, requeue_share=0.3, cancel_pending_share=0.1)
    built = build_timeline(scenario, T0)
    assert any(len(j.runs) > 1 for j in built.jobs) and any(j.cancel_at for j in built.jobs)
    return built


def _record(job: Any, run: Any) -> dict[str, Any]:
    row = {"jobId": job.job_id, "startTime": run.start, "cluster": CC_CLUSTER,
           "user": job.user, "project": job.account, "partition": job.partition,
           "numNodes": len(run.hosts), "jobState": cc_state(JobState[run.state], "1.5"),
           "duration": run.end - run.start,
           "resources": [{"hostname": h, "hwthreads": c} for h, c in zip(run.hosts, run.cores)]}
    if job.array_job_id:
        row["arrayJobId"] = job.array_job_id
    return row


def _perfect(timeline: Timeline) -> Result:
    """Every run has its record, stopped right; every stop came after the end."""
    records, requests, deliveries = [], [], []
    for job, _, run in timeline.runs():
        records.append(_record(job, run))
        key = f"{timeline.cluster}/{job.job_id}/{run.start}"
        body = {"jobId": job.job_id, "cluster": CC_CLUSTER, "startTime": run.start,
                "stopTime": run.end, "jobState": "completed"}
        start_body = {"jobId": job.job_id, "startTime": run.start,
                      "resources": _record(job, run)["resources"]}
        requests.append({"method": "POST", "path": "/api/jobs/start_job/", "status": 201,
                         "at": run.start + 1.1, "received": run.start + 1.0,
                         "body": json.dumps(start_body)})
        requests.append({"method": "POST", "path": "/api/jobs/stop_job/", "status": 200,
                         "at": run.end + 3.1, "received": run.end + 3.0,
                         "body": json.dumps(body)})
        for kind in ("start", "stop"):
            deliveries.append({"connector": "clustercockpit", "key": key, "kind": kind,
                               "status": "done", "at": run.end + 3, "detail": "{}"})
    return Result(scenario=Scenario.short(seed=11), timeline=timeline, work=Path("/nowhere"),
                  api_version="1.5", cycles=[], records=records, requests=requests, calls=[],
                  deliveries=deliveries, outbox=[], final_status="", final_status_code=0,
                  windows={}, kills=0, wall=1.0, drained=True)


def _failed(result: Result) -> dict[str, int]:
    return {name: len(items) for name, items in check(result).items() if items}


def test_a_perfect_outcome_passes_every_assertion(timeline: Timeline) -> None:
    findings = check(_perfect(timeline))
    assert set(findings) == set(ASSERTIONS)
    assert not any(findings.values()), findings


def _requeued(timeline: Timeline) -> tuple[Any, Any, Any]:
    job = next(j for j in timeline.jobs if len(j.runs) == 2)
    return job, job.runs[0], job.runs[1]


def test_lost_duplicated_and_invented_records(timeline: Timeline) -> None:
    result = _perfect(timeline)
    gone = result.records.pop(0)
    result.records.append(copy.deepcopy(result.records[0]))
    cancelled = next(j for j in timeline.jobs if j.cancel_at)
    result.records.append({**copy.deepcopy(result.records[1]), "jobId": cancelled.job_id,
                           "startTime": cancelled.cancel_at})
    failed = _failed(result)
    assert failed["lost"] == 1 and failed["duplicated"] == 1 and failed["invented"] == 1
    assert str(gone["jobId"]) in str(check(result)["lost"][0])


def test_a_record_left_running_or_stopped_wrong(timeline: Timeline) -> None:
    result = _perfect(timeline)
    single = {j.job_id for j in timeline.jobs if len(j.runs) == 1}
    first, second, third = [r for r in result.records if r["jobId"] in single][:3]
    first["jobState"] = "running"
    second["duration"] += 5
    third["jobState"] = "timeout" if third["jobState"] != "timeout" else "completed"
    assert _failed(result) == {"not_stopped": 1, "wrong_stop": 2}
    # on a requeued job, a record with another run's stop is named as such too
    job, _, later = _requeued(timeline)
    row = next(r for r in result.records if (r["jobId"], r["startTime"]) == (job.job_id,
                                                                             later.start))
    row["duration"] += 1
    assert _failed(result) == {"not_stopped": 1, "wrong_stop": 3, "requeue": 1}


def test_a_stop_before_the_end_or_for_no_run(timeline: Timeline) -> None:
    result = _perfect(timeline)
    stops = [q for q in result.requests if q["path"] == "/api/jobs/stop_job/"]
    body = json.loads(stops[0]["body"])
    stops[0]["received"] = body["stopTime"] - 0.5
    stops[1]["body"] = json.dumps({**json.loads(stops[1]["body"]), "startTime": 7})
    assert _failed(result) == {"early_stop": 2}
    # a request whose body a kill cut off, refused as unreadable, stopped nothing; one
    # without a body that the service took would have
    result.requests.append({**stops[2], "body": "", "status": 400})
    assert _failed(result) == {"early_stop": 2}
    result.requests.append({**stops[2], "body": "", "status": 200})
    assert _failed(result) == {"early_stop": 3}


def test_the_duplicate_rule_is_no_loss_when_said_plainly(timeline: Timeline) -> None:
    job, first, later = _requeued(timeline)
    result = _perfect(timeline)
    result.records = [r for r in result.records
                      if (r["jobId"], r["startTime"]) != (job.job_id, later.start)]
    key = f"{timeline.cluster}/{job.job_id}/{later.start}"
    for delivery in result.deliveries:
        if delivery["key"] == key:
            delivery["status"] = "permanent"
    assert _failed(result) == {}
    # but not when cc-backend holds no other run of the job
    result.records = [r for r in result.records
                      if (r["jobId"], r["startTime"]) != (job.job_id, first.start)]
    key_first = f"{timeline.cluster}/{job.job_id}/{first.start}"
    result.deliveries = [d for d in result.deliveries if d["key"] != key_first]
    failed = _failed(result)
    assert failed["lost"] == 2 and failed["refused"] == 2 and failed["requeue"] == 2


def test_state_db_must_agree_with_cc_backend_on_a_requeued_run(timeline: Timeline) -> None:
    job, _, later = _requeued(timeline)
    result = _perfect(timeline)
    result.records = [r for r in result.records
                      if (r["jobId"], r["startTime"]) != (job.job_id, later.start)]
    failed = _failed(result)
    assert failed["requeue"] == 2 and failed["lost"] == 1  # delivered per state.db, yet absent


def test_wrong_fields_and_hwthreads(timeline: Timeline) -> None:
    result = _perfect(timeline)
    result.records[0]["user"] = "someone"
    result.records[1]["resources"][0]["hwthreads"] = [99]
    assert _failed(result) == {"wrong_fields": 2}


def test_refusals_the_outbox_and_exit_codes(timeline: Timeline) -> None:
    result = _perfect(timeline)
    result.deliveries[0]["status"] = "permanent"
    result.outbox.append({"kind": "stop", "key": "x/1/2", "attempts": 3, "last_error": "500"})
    result.cycles.append(Cycle(0, 4242, T0, "active", ended=T0 + 1, exit_code=0))
    result.cycles.append(Cycle(1, 4343, T0 + 2, "active", ended=T0 + 3, exit_code=3))
    result.calls += [
        {"t": T0 + 0.1, "t_end": T0 + 0.2, "cmd": "squeue", "args": ["--json"], "ppid": 4242,
         "fault": "fail", "rc": 1},
        {"t": T0 + 2.1, "t_end": T0 + 2.2, "cmd": "squeue", "args": ["--json"], "ppid": 4343,
         "fault": "fail", "rc": 1},
    ]
    assert _failed(result) == {"refused": 1, "outbox": 1, "exit_codes": 1}


def test_a_start_without_hwthreads_while_squeue_could_tell(timeline: Timeline) -> None:
    result = _perfect(timeline)
    job, _, run = next((j, i, r) for j, i, r in timeline.runs()
                       if r.end - r.start >= 5 and len(j.runs) == 1)
    start = next(q for q in result.requests if q["path"] == "/api/jobs/start_job/"
                 and json.loads(q["body"])["jobId"] == job.job_id)
    body = json.loads(start["body"])
    body["resources"] = [{"hostname": h} for h in run.hosts]
    start["body"] = json.dumps(body)
    start["received"] = run.start + 3.0
    result.cycles.append(Cycle(0, 5151, run.start + 2.0, "active", ended=run.start + 4.0,
                               exit_code=0))
    # the cycle's sacct call came after the start was recorded, and said it runs
    result.calls.append({"t": run.start + 2.9, "t_end": run.start + 2.95, "cmd": "sacct",
                         "args": ["--json"], "ppid": 5151, "fault": "", "rc": 0})
    assert _failed(result) == {"degraded": 1}
