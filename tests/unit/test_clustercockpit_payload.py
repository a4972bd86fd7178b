"""The ClusterCockpit connector's payloads on 24.11 lab captures: per API version, host
mappings, state names (what a cycle plans: test_clustercockpit_plan.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from slurm_sync.connectors.clustercockpit import (
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
