"""cc-backend's payloads, built by pure functions from the job model (no I/O).

    >>> cc_state(JobState.NODE_FAIL, "1.4")
    'failed'
    >>> for_version({"job": {"shared": "single_user"}}, "start", "1.4")
    {'job': {'exclusive': 2}}

``start_payload`` is the start_job body of one run (``Unsendable`` when cc-backend must not get
it), ``stop_payload`` the stop_job body of an ended run; ``for_version`` puts a payload in the
schema of the API version it is sent to (1.4's ``exclusive`` or 1.5's ``shared``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slurm_sync.connectors.clustercockpit.settings import HostMap
from slurm_sync.slurm.model import Job, JobState, NodeAllocation

__all__ = [
    "PLAN_VERSION",
    "START",
    "STATES_14",
    "STATES_15",
    "STOP",
    "Unsendable",
    "cc_state",
    "for_version",
    "start_payload",
    "stop_payload",
]

#: The connector's two kinds of action.
START, STOP = "start", "stop"
#: The schema payloads are planned in while cc-backend's version is not known yet (``apply``
#: converts them with ``for_version`` when it sends them).
PLAN_VERSION = "1.5"

STATES_14 = frozenset({"running", "completed", "failed", "cancelled", "stopped", "timeout",
                       "preempted", "out_of_memory"})
STATES_15 = frozenset({"boot_fail", "cancelled", "completed", "deadline", "failed", "node_fail",
                       "out_of_memory", "pending", "preempted", "running", "suspended",
                       "timeout"})

# Slurm's end states in cc-backend's words. A requeued run ended because Slurm took the job back:
# cc-backend's advice (issue #30) is to close the old record as cancelled or failed.
_STATE_15 = {
    JobState.COMPLETED: "completed", JobState.CANCELLED: "cancelled", JobState.FAILED: "failed",
    JobState.TIMEOUT: "timeout", JobState.NODE_FAIL: "node_fail",
    JobState.PREEMPTED: "preempted", JobState.BOOT_FAIL: "boot_fail",
    JobState.DEADLINE: "deadline", JobState.OUT_OF_MEMORY: "out_of_memory",
    JobState.REQUEUED: "cancelled",
}
_STATE_14 = {**_STATE_15, JobState.NODE_FAIL: "failed", JobState.BOOT_FAIL: "failed",
             JobState.DEADLINE: "timeout"}


def cc_state(state: JobState, api_version: str) -> str:
    """`cc_state(JobState.NODE_FAIL, "1.4")` is ``failed``: the end state in the API's enum."""
    table = _STATE_14 if api_version == "1.4" else _STATE_15
    return table.get(state, "failed")


class Unsendable(ValueError):
    """A job cc-backend must not get (no hosts left after node_regex...): refused, with why."""


def _shared_15(shared: str | None) -> str:
    if shared == "none":
        return "none"
    if shared == "user":
        return "single_user"
    return "multi_user"


def _exclusive_14(shared: str | None) -> int:
    # 1.4: 0 shared by several users, 1 exclusive, 2 shared by one user's jobs.
    return {"none": 1, "user": 2}.get(shared or "", 0)


def _slurm_info(job: Job) -> str:
    """What ``scontrol show job`` would say of the fields cc users read, built from the model
    (no per-job scontrol call)."""
    fields = [
        ("JobId", job.display_id), ("JobName", job.name), ("UserId", job.user),
        ("Account", job.account), ("Partition", job.partition), ("QOS", job.qos),
        ("JobState", job.state.value), ("Reason", job.reason), ("NodeList", job.nodelist),
        ("NumNodes", job.node_count), ("NumCPUs", job.cpus), ("TimeLimit", job.time_limit),
        ("SubmitTime", job.submit_time), ("StartTime", job.start_time),
        ("Restarts", job.restart_count), ("WorkDir", job.work_dir), ("Comment", job.comment),
        ("TRES", ",".join(f"{k}={v}" for k, v in job.tres_allocated.items())
         or ",".join(f"{k}={v}" for k, v in job.tres_requested.items())),
        ("GresDetail", ";".join(job.gres_detail)),
    ]
    return "\n".join(f"{k}={'' if v is None else v}" for k, v in fields if v not in (None, ""))


def start_payload(
    job: Job, *, cluster: str, api_version: str, mapping: HostMap,
) -> tuple[dict[str, Any], list[str]]:
    """The start_job body of one job run, and notes (hosts left out, what is unknown).

    Raises ``Unsendable`` when no host is left: cc-backend refuses an empty ``resources``.
    ``len(resources) == numNodes`` always holds.
    """
    notes: list[str] = []
    by_host = {a.hostname: a for a in job.allocations}
    hosts = [h for h in job.hosts if mapping.keeps(h)]
    if len(hosts) < len(job.hosts):
        notes.append(f"hosts not matching node_regex left out: "
                     f"{','.join(h for h in job.hosts if not mapping.keeps(h))}")
    if not hosts:
        raise Unsendable("no host matches node_regex" if job.hosts else "the job has no hosts")
    resources = []
    hwthreads = 0
    known_threads = True
    accelerators = 0
    unmapped: list[str] = []
    for host in hosts:
        allocation = by_host.get(host, NodeAllocation(hostname=host))
        resource: dict[str, Any] = {"hostname": host}
        if allocation.cpu_ids is not None and not allocation.ambiguous:
            resource["hwthreads"] = list(allocation.cpu_ids)
            hwthreads += len(allocation.cpu_ids)
        else:
            known_threads = False
        if allocation.gpu_ids:
            table = mapping.bus_ids(host)
            if table is None:
                unmapped.append(host)
            else:
                ids = [table[i] for i in allocation.gpu_ids if i in table]
                if len(ids) < len(allocation.gpu_ids):
                    notes.append(f"{host}: gres indices without a PCI bus id in accelerators: "
                                 f"{[i for i in allocation.gpu_ids if i not in table]}")
                if ids:
                    resource["accelerators"] = ids
                    accelerators += len(ids)
        resources.append(resource)
    if unmapped:
        notes.append(f"no accelerators mapping for {','.join(unmapped)}: GPUs not sent")
    if any(by_host.get(h) and by_host[h].ambiguous for h in hosts):
        notes.append("core ids ambiguous (Slurm 21.08's v0.0.37 without patches/): no hwthreads")
    elif not known_threads:
        notes.append("allocation details unknown (no core ids): the job had left squeue when "
                     "it was synced")
    cpus = job.tres_allocated.get("cpu") or job.cpus or 0
    gpus = job.gpu_count or job.tres_allocated.get("gres/gpu", 0)
    payload: dict[str, Any] = {
        "jobId": job.job_id,
        "user": job.user or "",
        "project": job.account or "",
        "cluster": cluster,
        "partition": job.partition or "",
        "numNodes": len(resources),
        "numHwthreads": hwthreads if known_threads and len(hosts) < len(job.hosts) else cpus,
        "numAcc": accelerators if accelerators else (gpus if len(hosts) == len(job.hosts) else 0),
        "walltime": (job.time_limit or 0) * 60,
        "startTime": job.start_time,
        "resources": resources,
    }
    if job.array_job_id:
        payload["arrayJobId"] = job.array_job_id
    subcluster = mapping.subcluster(hosts[0])
    if subcluster:
        payload["subCluster"] = subcluster
    if api_version == "1.4":
        payload["exclusive"] = _exclusive_14(job.shared)
    else:
        payload["shared"] = _shared_15(job.shared)
        if job.submit_time:
            payload["submitTime"] = job.submit_time
        memory = job.tres_allocated.get("mem") or job.tres_requested.get("mem")
        if memory:
            payload["requestedMemory"] = memory
    meta = {"jobName": job.name, "slurmInfo": _slurm_info(job)}
    if notes:
        meta["slurmSyncNotes"] = "; ".join(notes)
    payload["metaData"] = meta
    return payload, notes


def stop_payload(job: Job, *, cluster: str, api_version: str,
                 start_time: int | None = None) -> dict[str, Any]:
    """The stop_job body of one ended run: always with its start time (cc-backend stops the
    newest record of a job id otherwise), and a stop time never before the start."""
    start = start_time if start_time is not None else job.start_time or 0
    return {
        "jobId": job.job_id,
        "cluster": cluster,
        "startTime": start,
        "stopTime": max(job.end_time or start, start),
        "jobState": cc_state(job.state, api_version),
    }


# 1.4's ``exclusive`` and 1.5's ``shared`` say the same three things.
_EXCLUSIVE_OF_SHARED = {"none": 1, "single_user": 2, "multi_user": 0}
_SHARED_OF_EXCLUSIVE = {v: k for k, v in _EXCLUSIVE_OF_SHARED.items()}
_ONLY_15 = ("shared", "submitTime", "requestedMemory")
_STATE_15_AS_14 = {"node_fail": "failed", "boot_fail": "failed", "deadline": "timeout"}


def for_version(payload: Mapping[str, Any], kind: str, api_version: str) -> dict[str, Any]:
    """An action's payload in ``api_version``'s schema, whichever version it was planned for:
    a start planned before the version was known, or queued in the outbox under a wrong
    ``api_version``, is sent in the schema the backend decodes.

    `for_version({"job": {"shared": "single_user"}}, "start", "1.4")` is
    ``{"job": {"exclusive": 2}}``; a stop's 1.5-only states become 1.4's (node_fail: failed).
    """
    if kind == STOP:
        out = dict(payload)
        if api_version == "1.4" and out.get("jobState") in _STATE_15_AS_14:
            out["jobState"] = _STATE_15_AS_14[out["jobState"]]
        return out
    if not isinstance(payload.get("job"), Mapping):
        return dict(payload)  # an old outbox entry of no known form: left as it is
    body = dict(payload["job"])
    if api_version == "1.4":
        if "shared" in body:
            body["exclusive"] = _EXCLUSIVE_OF_SHARED.get(body["shared"], 0)
        for name in _ONLY_15:
            body.pop(name, None)
    elif "exclusive" in body:
        body["shared"] = _SHARED_OF_EXCLUSIVE.get(body.pop("exclusive"), "multi_user")
    return {**payload, "job": body}

