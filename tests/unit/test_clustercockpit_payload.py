"""The ClusterCockpit connector's pure parts on 24.11 lab captures: payloads per API version,
host mappings, state names, and what a cycle plans."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from slurm_sync.connector import Direction, Scope, Snapshot, View, delivery_key
from slurm_sync.connectors.clustercockpit import (
    ClusterCockpitConnector,
    HostMap,
    Unsendable,
    cc_state,
    start_payload,
    stop_payload,
)
from slurm_sync.errors import ConfigError
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.parse import parse_sacct, parse_squeue

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "slurm" / "24.11"
BUS = {"0": "00000000:03:00.0", "1": "00000000:04:00.0", "2": "00000000:05:00.0"}


def _squeue(name: str) -> dict[int, Job]:
    return {j.job_id: j for j in parse_squeue((FIXTURES / name).read_bytes()).jobs}


def _sacct() -> dict[int, Job]:
    return {j.job_id: j for j in parse_sacct((FIXTURES / "sacct.json").read_bytes()).jobs}


def test_a_gpu_job_gets_socket_aware_hwthreads_and_mapped_bus_ids() -> None:
    job = _squeue("squeue-running.json")[4]  # gpu2: core 2, GPUs 0 and 1
    payload, notes = start_payload(job, cluster="cc", api_version="1.5",
                                   mapping=HostMap.from_settings({"accelerators": {"lab": BUS}}))
    assert payload["resources"] == [{"hostname": "lab2411n1", "hwthreads": [2],
                                     "accelerators": [BUS["0"], BUS["1"]]}]
    assert (payload["numNodes"], payload["numHwthreads"], payload["numAcc"]) == (1, 1, 2)
    assert payload["cluster"] == "cc" and payload["jobId"] == 4
    assert payload["startTime"] == 1795321804 and payload["shared"] == "multi_user"
    assert "exclusive" not in payload and payload["submitTime"] > 0
    assert all(isinstance(v, str) for v in payload["metaData"].values())
    assert "NodeList=lab2411n1" in payload["metaData"]["slurmInfo"]
    assert notes == []


def test_api_14_sends_exclusive_and_no_15_fields() -> None:
    job = replace(_squeue("squeue-running.json")[3], shared="none")
    payload, _ = start_payload(job, cluster="cc", api_version="1.4", mapping=HostMap())
    assert payload["exclusive"] == 1
    assert not {"shared", "submitTime", "requestedMemory"} & payload.keys()
    assert start_payload(replace(job, shared="user"), cluster="cc", api_version="1.4",
                         mapping=HostMap())[0]["exclusive"] == 2
    assert start_payload(replace(job, shared="mcs"), cluster="cc", api_version="1.4",
                         mapping=HostMap())[0]["exclusive"] == 0


def test_a_host_without_mapping_sends_no_accelerators_and_says_so() -> None:
    job = _squeue("squeue-running.json")[4]
    payload, notes = start_payload(job, cluster="cc", api_version="1.5",
                                   mapping=HostMap.from_settings({"accelerators": {"gpu": BUS}}))
    assert "accelerators" not in payload["resources"][0]
    assert payload["numAcc"] == 2  # Slurm's count still says what the job held
    assert "no accelerators mapping for lab2411n1" in notes[0]


def test_regex_and_list_forms_of_accelerators() -> None:
    mapping = HostMap.from_settings({"accelerators": {
        "^lab[0-9]+n1$": ["a", "b"], "lab": {"0": "x"}}})
    assert mapping.bus_ids("lab2411n1") == {0: "a", 1: "b"}
    assert mapping.bus_ids("lab2411n2") == {0: "x"}
    assert mapping.bus_ids("other") is None
    with pytest.raises(ConfigError, match="node_regex"):
        HostMap.from_settings({"node_regex": "("})


def test_node_regex_leaves_out_hosts_and_never_sends_empty_resources() -> None:
    job = _squeue("squeue-running.json")[3]
    with pytest.raises(Unsendable, match="no host matches node_regex"):
        start_payload(job, cluster="cc", api_version="1.5",
                      mapping=HostMap.from_settings({"node_regex": "^gpu"}))
    two = replace(job, hosts=("lab2411n1", "login1"), node_count=2)
    payload, notes = start_payload(two, cluster="cc", api_version="1.5",
                                   mapping=HostMap.from_settings({"node_regex": "^lab"}))
    assert payload["numNodes"] == len(payload["resources"]) == 1
    assert "login1" in notes[0]


def test_a_job_seen_only_by_sacct_says_its_allocation_is_unknown() -> None:
    job = _sacct()[14]
    payload, notes = start_payload(job, cluster="cc", api_version="1.5", mapping=HostMap())
    assert payload["resources"] == [{"hostname": "lab2411n1"}]
    assert "allocation details unknown" in payload["metaData"]["slurmSyncNotes"]
    assert notes


@pytest.mark.parametrize(("state", "v14", "v15"), [
    (JobState.COMPLETED, "completed", "completed"),
    (JobState.NODE_FAIL, "failed", "node_fail"),
    (JobState.BOOT_FAIL, "failed", "boot_fail"),
    (JobState.DEADLINE, "timeout", "deadline"),
    (JobState.OUT_OF_MEMORY, "out_of_memory", "out_of_memory"),
    (JobState.REQUEUED, "cancelled", "cancelled"),
    (JobState.TIMEOUT, "timeout", "timeout"),
])
def test_end_states_in_each_apis_enum(state: JobState, v14: str, v15: str) -> None:
    assert (cc_state(state, "1.4"), cc_state(state, "1.5")) == (v14, v15)


def test_stop_always_carries_the_start_and_never_ends_before_it() -> None:
    job = _sacct()[5]  # pad3: cancelled the second it started
    body = stop_payload(job, cluster="cc", api_version="1.5")
    assert body == {"jobId": 5, "cluster": "cc", "startTime": 1795321807,
                    "stopTime": 1795321807, "jobState": "cancelled"}
    early = replace(job, end_time=job.start_time - 5)  # type: ignore[operator]
    assert stop_payload(early, cluster="cc", api_version="1.5")["stopTime"] == job.start_time


def _connector(tmp_path: Path, **settings: object) -> ClusterCockpitConnector:
    token = tmp_path / "token"
    token.write_text("jwt\n")
    token.chmod(0o600)
    return ClusterCockpitConnector({"url": "http://127.0.0.1:9", "token": {"file": str(token)},
                                    "cluster": "cc", **settings})


def test_a_short_job_gets_start_then_stop_in_one_cycle(tmp_path: Path) -> None:
    connector = _connector(tmp_path)
    ended = tuple(_sacct().values())
    view = View(now=1795321999, active=(), ended=ended, squeue_ok=True, sacct_ok=True)
    plan = connector.plan(view, Snapshot(), Direction.BOTH, Scope(job_ids=(14,)))
    assert [(a.kind, a.key) for a in plan] == [("start", "lab2411/14/1795321838"),
                                               ("stop", "lab2411/14/1795321838")]
    assert plan[1].payload["jobState"] == "completed"


def test_pending_jobs_and_jobs_that_never_ran_are_not_started(tmp_path: Path) -> None:
    connector = _connector(tmp_path)
    active = tuple(_squeue("squeue-running.json").values())
    view = View(now=1795321999, active=active, squeue_ok=True, sacct_ok=True)
    plan = connector.plan(view, Snapshot(), Direction.START, Scope())
    started = {a.payload["job"]["jobId"] for a in plan}
    assert 1 not in started and 7 not in started and 8 not in started
    assert {3, 4, 6} <= started


def test_delivered_runs_are_not_started_again_and_stops_need_a_start(tmp_path: Path) -> None:
    connector = _connector(tmp_path)
    jobs = _sacct()
    view = View(now=1795321999, ended=(jobs[3], jobs[4]), squeue_ok=True, sacct_ok=True)
    snapshot = Snapshot(delivered={"start": frozenset({delivery_key(jobs[3])})})
    plan = connector.plan(view, snapshot, Direction.STOP, Scope())
    assert [(a.kind, a.payload["jobId"]) for a in plan] == [("stop", 3)]


def test_a_short_job_still_in_squeue_gets_its_cores_from_there(tmp_path: Path) -> None:
    """squeue holds ended jobs for MinJobAge: their start payload takes the cores from it,
    while the stop comes from sacct."""
    connector = _connector(tmp_path)
    finished = tuple(_squeue("squeue-finished.json").values())
    view = View(now=1795321999, active=finished, ended=tuple(_sacct().values()),
                squeue_ok=True, sacct_ok=True)
    plan = connector.plan(view, Snapshot(), Direction.BOTH, Scope(job_ids=(15,)))
    start, stop = plan
    assert start.payload["job"]["resources"] == [{"hostname": "lab2411n1", "hwthreads": [1]}]
    assert stop.payload["jobState"] == "failed" and stop.payload["stopTime"] == 1795321839
    asked = connector.needs().squeue
    assert asked is not None and "PD" not in asked.states and "CD" in asked.states


def test_a_run_that_ended_before_the_window_is_stopped_on_squeues_word(tmp_path: Path) -> None:
    """squeue still holds ended jobs for MinJobAge; one that ended before the sacct window
    must get its stop from squeue, or its record stays running."""
    connector = _connector(tmp_path)
    finished = tuple(_squeue("squeue-finished.json").values())
    view = View(now=1795321999, active=finished, ended=(), squeue_ok=True, sacct_ok=True)
    plan = connector.plan(view, Snapshot(), Direction.BOTH, Scope(job_ids=(16,)))
    assert [(a.kind, a.payload.get("jobState")) for a in plan] == [
        ("start", None), ("stop", "failed")]
