"""ClusterCockpit: start and stop job records in cc-backend (REST API of 1.4 and 1.5).

    "connectors": {"clustercockpit": {
        "url": "https://cc.example.org", "token": {"file": "/etc/slurm-sync/cc-token"},
        "api_version": "1.5", "cluster": "fritz",
        "accelerators": {"gpu0": {"0": "00000000:03:00.0", "1": "00000000:44:00.0"}},
        "node_regex": "^gpu[0-9]+$"}}

Starts: every job run Slurm shows running (squeue) or that ran inside the sacct window, which
cc-backend does not have yet, gets ``POST /api/jobs/start_job/``; a job that started and ended
between two cycles gets its start and its stop in the same cycle. Stops: every started run that
sacct reports ended gets ``POST /api/jobs/stop_job/`` with its start time, so a requeued job's old
record is closed and its new run is a new record.

Safety: a stop needs Slurm's word that the run ended (a finished sacct record with the same start
time); a job cc-backend lists as running that Slurm says nothing about is reported and left
alone. 404/422 on stop means it is stopped or unknown: recorded, not retried. A 500 on a start
may be cc-backend 1.5's job_cache duplicate: it is retried from the outbox and ends as 422 once
the cache is committed.

Requeued jobs: cc-backend keeps one record per job id and cluster for 24 hours. Starts go out
through ``apply_many``: the runs of one job id in order of their start, one at a time, and a run
whose start did not get through holds back the later ones. A 422 on start is resolved by asking
cc-backend which run it holds (its job list around the start time, filtered by jobId here):
this run (already done), our earlier run still running there (the start waits for its stop),
or another run (refused for good, naming both). A list that cannot be read leaves it queued.

Versions: without ``api_version`` the connector asks cc-backend once per process
(``detect_api_version``); payloads are put in the version's schema when sent (``for_version``).
A 400 from cc-backend's decoder (unknown field, wrong type) is the connector's configuration,
not the job's: ``halted`` says what to fix and the actions wait in the outbox.

Reconcile: on the first run (no watermark: a new install, or the store was lost) the connector
lists cc-backend's running jobs of its cluster (``GET /api/jobs/``, paged) and adopts those
Slurm still runs, so nothing is started twice; runs that Slurm says ended are stopped.

The payload is built by pure functions (``start_payload``, ``stop_payload``) from the job model;
``apply`` adds the job script (StateSaveLocation, else ``scontrol write batch_script``) and sends.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from slurm_sync.actions import Action, Outcome, RunKey, Status
from slurm_sync.commands import EXIT_FAILED, EXIT_OK, CommandContext
from slurm_sync.config import AdaptedConfig
from slurm_sync.connector import (
    Connector,
    Direction,
    Kind,
    Scope,
    SlurmContext,
    SlurmNeeds,
    Snapshot,
    View,
    delivery_key,
)
from slurm_sync.connectors.clustercockpit.legacy import from_cc_slurm_sync, is_cc_slurm_sync
from slurm_sync.errors import ConfigError, SlurmError
from slurm_sync.http import Reply, ServiceClient, outcome_of
from slurm_sync.secrets import SECRET_REF_SCHEMA, header_problem
from slurm_sync.slurm.model import Job, JobState, NodeAllocation
from slurm_sync.slurm.query import JobFilter, SacctWindow

__all__ = [
    "ClusterCockpitConnector",
    "HostMap",
    "cc_state",
    "detect_api_version",
    "for_version",
    "start_payload",
    "stop_payload",
]

log = logging.getLogger(__name__)

START, STOP = "start", "stop"
SQUEUE_STATES = ("R", "CG", "S", "CD", "F", "CA", "TO", "NF", "PR", "OOM", "BF", "DL")
DUPLICATE_WINDOW = 86400  # cc-backend refuses a start within this long of another run's
API_VERSIONS = ("1.4", "1.5")
ENV_LIMIT_DEFAULT = 50_000

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


_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url", "token"],
    "properties": {
        "url": {"type": "string", "pattern": "^https?://",
                "description": "cc-backend's address, without /api"},
        "token": SECRET_REF_SCHEMA,
        "token_json_key": {
            "type": "string", "pattern": "^[^.]+(\\.[^.]+)*$",
            "description": "the token file is JSON and the token is at this dotted key "
                           "(cc-slurm-sync's config.json: cc-backend.apikey)"},
        "api_version": {"enum": list(API_VERSIONS)},
        "cluster": {"type": "string", "minLength": 1,
                    "description": "the cluster's name in cc-backend (default: Slurm's)"},
        "subclusters": {
            "type": "object",
            "additionalProperties": {"type": "string", "minLength": 1},
            "description": "hostname regex -> subCluster; unmatched jobs let cc-backend choose",
        },
        "accelerators": {
            "type": "object",
            "additionalProperties": {
                "oneOf": [
                    {"type": "object",
                     "propertyNames": {"pattern": "^[0-9]+$"},
                     "additionalProperties": {"type": "string", "minLength": 1}},
                    {"type": "array", "items": {"type": "string", "minLength": 1}},
                ]
            },
            "description": "hostname prefix (or ^regex) -> {gres index: PCI bus id} or a list",
        },
        "node_regex": {"type": "string", "minLength": 1},
        "job_script": {"type": "boolean"},
        "environment": {"type": "boolean"},
        "environment_max_bytes": {"type": "integer", "minimum": 0},
        "ca_bundle": {"type": "string", "pattern": "^/"},
        "verify_tls": {"type": "boolean"},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
        "retries": {"type": "integer", "minimum": 0, "maximum": 10},
        "reconcile": {"enum": ["first_run", "always", "never"]},
        "page_size": {"type": "integer", "minimum": 1, "maximum": 100000},
    },
}


# --- settings, read once ------------------------------------------------------------------------


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where}: {pattern!r} is not a regular expression: {exc}") from exc


@dataclass(frozen=True)
class HostMap:
    """The host-side mappings: accelerators, node_regex and subclusters, compiled once."""

    accelerators: tuple[tuple[str, re.Pattern[str] | None, Mapping[int, str]], ...] = ()
    node_regex: re.Pattern[str] | None = None
    subclusters: tuple[tuple[re.Pattern[str], str], ...] = ()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> HostMap:
        accelerators = []
        for key, value in dict(settings.get("accelerators", {})).items():
            where = f"$.connectors.clustercockpit.accelerators[{key!r}]"
            pattern = _compile(key, where) if key.startswith("^") else None
            if isinstance(value, Mapping):
                table = {int(i): str(bus) for i, bus in value.items()}
            else:
                table = {i: str(bus) for i, bus in enumerate(value)}
            accelerators.append((key, pattern, table))
        node_regex = settings.get("node_regex")
        return cls(
            accelerators=tuple(accelerators),
            node_regex=(_compile(node_regex, "$.connectors.clustercockpit.node_regex")
                        if node_regex else None),
            subclusters=tuple(
                (_compile(k, f"$.connectors.clustercockpit.subclusters[{k!r}]"), v)
                for k, v in dict(settings.get("subclusters", {})).items()
            ),
        )

    def bus_ids(self, hostname: str) -> Mapping[int, str] | None:
        """The host's {gres index: PCI bus id}, or None when no entry names the host (a regex
        entry must match the whole name; otherwise the longest matching prefix wins, as
        cc-slurm-sync's prefixes did)."""
        best: tuple[int, Mapping[int, str]] | None = None
        for key, pattern, table in self.accelerators:
            if pattern is not None:
                if pattern.fullmatch(hostname):
                    return table
            elif hostname.startswith(key) and (best is None or len(key) > best[0]):
                best = (len(key), table)
        return best[1] if best else None

    def keeps(self, hostname: str) -> bool:
        return self.node_regex is None or bool(self.node_regex.search(hostname))

    def subcluster(self, hostname: str) -> str | None:
        for pattern, name in self.subclusters:
            if pattern.search(hostname):
                return name
        return None


# --- payloads (pure) ----------------------------------------------------------------------------


class Unsendable(ValueError):
    """A job cc-backend must not get (no hosts left after node_regex...): skipped, with why."""


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
        return dict(payload)  # adopt, skip: nothing is sent
    body = dict(payload["job"])
    if api_version == "1.4":
        if "shared" in body:
            body["exclusive"] = _EXCLUSIVE_OF_SHARED.get(body["shared"], 0)
        for name in _ONLY_15:
            body.pop(name, None)
    elif "exclusive" in body:
        body["shared"] = _SHARED_OF_EXCLUSIVE.get(body.pop("exclusive"), "multi_user")
    return {**payload, "job": body}


def detect_api_version(client: ServiceClient, cluster: str | None) -> tuple[str | None, str]:
    """(cc-backend's API version, "") or (None, why it cannot be told), from two harmless
    listings of at most one job: the job list validates its ``state`` parameter against the
    version's enum, so ``stopped`` (1.4 only) and ``node_fail`` (1.5 only) are accepted by one
    version each, whether or not any job exists."""
    answers = {}
    for state in ("stopped", "node_fail"):
        params: dict[str, Any] = {"state": state, "items-per-page": 1}
        if cluster:
            params["cluster"] = cluster
        reply = client.get("/api/jobs/", params=params)
        if not reply.ok and reply.status != 400:
            return None, reply.describe()
        answers[state] = reply.ok
    if answers == {"stopped": True, "node_fail": False}:
        return "1.4", ""
    if answers == {"stopped": False, "node_fail": True}:
        return "1.5", ""
    return None, ("cc-backend's job list answers neither as 1.4 nor as 1.5 "
                  f"(state=stopped {'accepted' if answers['stopped'] else 'refused'}, "
                  f"state=node_fail {'accepted' if answers['node_fail'] else 'refused'})")


# cc-backend's JSON decoder on a body that does not fit its schema (a field of another API
# version, a wrong type), and stop_job on a state outside the version's enum: the connector's
# configuration is wrong, not the job.
_SCHEMA_ERROR = re.compile(r"json: (unknown field|cannot unmarshal)|invalid requested job state")


def _schema_error(reply: Reply) -> str | None:
    """The decoder's words when a 400 says the payload's schema is wrong, else None."""
    if reply.status != 400:
        return None
    text = reply.describe()
    found = _SCHEMA_ERROR.search(text)
    return text[found.start():] if found else None


# --- what cc-backend has (reconcile) ------------------------------------------------------------


@dataclass(frozen=True)
class RemoteRun:
    """A job cc-backend lists as running."""

    job_id: int
    start_time: int
    cluster: str


def remote_runs(pages: Iterable[Any], cluster: str) -> tuple[list[RemoteRun], list[str]]:
    """The running jobs of ``cluster`` in listing pages; entries that cannot be read are named."""
    runs, bad = [], []
    for page in pages:
        for index, item in enumerate(page.get("jobs") or []):
            try:
                run = RemoteRun(int(item["jobId"]), int(item["startTime"]),
                                str(item.get("cluster", cluster)))
            except (KeyError, TypeError, ValueError):
                bad.append(f"jobs[{index}]: {json.dumps(item)[:120]}")
                continue
            if run.cluster == cluster:
                runs.append(run)
    return runs, bad


# --- the connector ------------------------------------------------------------------------------


class ClusterCockpitConnector(Connector):
    """Job records in cc-backend."""

    name: ClassVar[str] = "clustercockpit"
    schema: ClassVar[Mapping[str, Any]] = _SCHEMA
    # Starts go out together: the runs of one job id in order, one at a time (apply_many).
    kinds: ClassVar[tuple[Kind, ...]] = (
        Kind(START, Direction.START, batched=True),
        Kind(STOP, Direction.STOP, destructive=True),
    )

    @classmethod
    def add_commands(cls, commands: Any) -> None:
        mine = commands.add_parser("clustercockpit", help="ClusterCockpit helpers")
        sub = mine.add_subparsers(dest="cc_command", metavar="COMMAND", required=True)
        sub.add_parser(
            "discover-accelerators",
            help="print this node's 'accelerators' block (gres index -> PCI bus id) from "
                 "nvidia-smi").set_defaults(handler=discover_accelerators_command)

    @classmethod
    def adapt_config(cls, data: Mapping[str, Any], path: str) -> AdaptedConfig | None:
        """cc-slurm-sync's config.json runs as it is (``legacy``)."""
        if not is_cc_slurm_sync(data):
            return None
        run, suggested = from_cc_slurm_sync(data, path)
        return AdaptedConfig(run, suggested, "this is cc-slurm-sync's config; it works as it "
                             "is, but the API token should move to a file of its own "
                             "(chmod 600).")

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        # None: asked of cc-backend before the first action (detect_api_version), once per
        # process. ``api_version`` is what plan builds payloads for; apply converts them.
        self.configured_version: str | None = settings.get("api_version")
        self.api_version = str(self.configured_version or "1.5")
        self._detected: str | None = None
        self._detect_lock = threading.Lock()
        # Start keys delivered in this cycle's batch, and what the store said before this
        # cycle's plan: which run of a job id is ours, which earlier run waits in the outbox.
        self._delivered_now: set[str] = set()
        self._snapshot = Snapshot()
        self.mapping = HostMap.from_settings(settings)
        self.cc_cluster: str | None = settings.get("cluster")
        self.reconcile_mode = str(settings.get("reconcile", "first_run"))
        self.page_size = int(settings.get("page_size", 1000))
        self.want_script = bool(settings.get("job_script", True))
        self.want_env = bool(settings.get("environment", False))
        self.env_limit = int(settings.get("environment_max_bytes", ENV_LIMIT_DEFAULT))
        token = _token(self.secret("token").reveal(), settings.get("token_json_key"))
        verify: bool | str = bool(settings.get("verify_tls", True))
        if verify and settings.get("ca_bundle"):
            verify = str(settings["ca_bundle"])
        self.client = ServiceClient(
            str(settings["url"]),
            headers={"X-Auth-Token": token, "Content-Type": "application/json"},
            timeout=float(settings.get("timeout", 30)),
            retries=int(settings.get("retries", 2)),
            verify=verify,
        )
        self.slurm: SlurmContext | None = None
        self._remote: list[RemoteRun] | None = None
        self._looked_up: tuple[Job, ...] = ()

    # -- wiring

    def bind(self, slurm: SlurmContext) -> None:
        self.slurm = slurm
        if self.cc_cluster is None and slurm.cluster:
            self.cc_cluster = slurm.cluster

    def cluster_for(self, job: Job) -> str:
        return self.cc_cluster or job.cluster or ""

    def needs(self) -> SlurmNeeds:
        # Running jobs, and jobs that ended within MinJobAge, while slurmctld still knows their
        # cores (a short job's record gets its hwthreads that way); the window for every end.
        # Pending jobs, the bulk of a busy queue, are never asked for.
        return SlurmNeeds(squeue=JobFilter(states=SQUEUE_STATES), sacct=True)

    def close(self) -> None:
        self.client.close()

    # -- observe: what cc-backend has, on a first run (I/O, before plan)

    def observe(self, view: View, snapshot: Snapshot) -> Snapshot:
        self._snapshot = snapshot  # for apply: our runs, and earlier runs still queued
        self._remote = None
        self._looked_up = ()
        unmapped = sorted({a.hostname for j in view.active for a in j.allocations
                           if a.gpu_ids and self.mapping.bus_ids(a.hostname) is None})
        if unmapped:
            log.warning("no accelerators mapping: GPUs of these hosts are not sent",
                        extra={"fields": {"hosts": ",".join(unmapped)}})
        first = snapshot.watermark is None
        if self.reconcile_mode == "never" or (self.reconcile_mode == "first_run" and not first):
            return snapshot
        if self.cc_cluster is None:
            self.cc_cluster = next((j.cluster for j in (*view.active, *view.ended) if j.cluster),
                                   None)
        if self.cc_cluster is None:
            log.warning("no cluster name known (set connectors.clustercockpit.cluster); "
                        "no reconcile this cycle")
            return snapshot
        runs = self._list_running()
        if runs is None:
            return snapshot
        self._remote = runs
        # Runs Slurm shows neither running nor in the window: ask sacct once, for all of them.
        seen = {(j.job_id, j.start_time) for j in (*view.active, *view.ended)}
        missing = sorted({r.job_id for r in runs if (r.job_id, r.start_time) not in seen})
        if missing and self.slurm is not None and view.slurm_ok:
            try:
                found = self.slurm.reader.sacct(
                    SacctWindow(0, int(view.now) + 1),
                    JobFilter(states=("all",), job_ids=tuple(missing)),
                )
                self._looked_up = found.jobs
            except SlurmError as exc:
                log.warning("sacct lookup of cc-backend's running jobs failed",
                            extra={"fields": {"error": str(exc)}})
        known = seen | {(j.job_id, j.start_time) for j in self._looked_up}
        unknown = [r for r in runs if (r.job_id, r.start_time) not in known]
        if unknown:
            # Never stopped on a guess: Slurm must say a run ended before it is stopped.
            log.warning("cc-backend lists running jobs Slurm has no record of; left alone",
                        extra={"fields": {"count": len(unknown), "jobs": ", ".join(
                            f"{r.job_id}@{r.start_time}" for r in unknown[:20])}})
        return snapshot

    def _list_running(self) -> list[RemoteRun] | None:
        cluster = self.cc_cluster or ""
        pages, page = [], 1
        while True:
            reply = self.client.get("/api/jobs/", params={
                "state": "running", "cluster": cluster, "page": page,
                "items-per-page": self.page_size})
            if not reply.ok or not isinstance(reply.body, Mapping):
                log.warning("cannot list cc-backend's running jobs; no reconcile this cycle",
                            extra={"fields": {"error": reply.describe()}})
                return None
            pages.append(reply.body)
            if len(reply.body.get("jobs") or []) < self.page_size:
                break
            page += 1
        runs, bad = remote_runs(pages, cluster)
        for entry in bad:
            log.warning("unreadable job in cc-backend's list", extra={"fields": {"entry": entry}})
        log.info("reconcile: cc-backend lists running jobs",
                 extra={"fields": {"count": len(runs), "pages": len(pages)}})
        return runs

    # -- plan (pure over view, snapshot and what observe found)

    def plan(
        self, view: View, snapshot: Snapshot, direction: Direction, scope: Scope,
        observed: Any = None,
    ) -> list[Action]:
        runs: dict[str, Job] = {}
        ends: dict[str, Job] = {}
        # squeue first: while a job runs it knows the cores and GPUs; sacct fills in the rest.
        for job in (*view.active, *view.ended, *self._looked_up):
            if job.start_time and scope.covers(job):
                runs.setdefault(delivery_key(job), job)
        # sacct is asked after squeue, so its word that a run ended wins for the stop; a run
        # squeue still holds as ended (MinJobAge) but that ended before the window has only
        # squeue's word, and is stopped on it, or its record would stay running for ever.
        for job in (*view.ended, *self._looked_up, *view.active):
            if job.start_time and job.end_time and job.state.finished and scope.covers(job):
                ends.setdefault(delivery_key(job), job)
        remote = {(r.job_id, r.start_time) for r in (self._remote or ())}
        starts: list[Action] = []
        stops: list[Action] = []
        started = set(snapshot.delivered.get(START, frozenset()))
        for key, job in runs.items():
            in_cc = (job.job_id, job.start_time) in remote
            if direction.includes(Direction.START) and not snapshot.done(START, key):
                if in_cc:
                    starts.append(Action(self.name, START, key, {"adopt": True},
                                         "already running in cc-backend (reconcile)"))
                    started.add(key)
                elif not job.hosts:
                    continue  # never ran anywhere (cancelled while pending)
                elif job.source != "squeue" and (job.state.active or not view.squeue_ok):
                    # Only squeue knows a running job's cores and GPUs: a run sacct alone shows
                    # (squeue failed, or it started between the two calls) waits for the next
                    # cycle's squeue rather than being sent without its allocation for good.
                    continue
                else:
                    starts.append(self._start(key, job))
                    started.add(key)
            end = ends.get(key)
            if (end is not None and direction.includes(Direction.STOP)
                    and (key in started or in_cc) and not snapshot.done(STOP, key)):
                stops.append(Action(
                    self.name, STOP, key,
                    stop_payload(end, cluster=self.cluster_for(end),
                                 api_version=self.api_version),
                    f"ended {end.state.value.lower()}"))
        starts.sort(key=lambda a: (a.payload.get("startTime") or 0, a.key))
        stops.sort(key=lambda a: (a.payload.get("stopTime") or 0, a.key))
        return [*starts, *stops]

    def _start(self, key: str, job: Job) -> Action:
        try:
            payload, _ = start_payload(job, cluster=self.cluster_for(job),
                                       api_version=self.api_version, mapping=self.mapping)
        except Unsendable as exc:
            return Action(self.name, START, key, {"skip": str(exc)}, str(exc))
        files = {"job_id": job.job_id, "array_job_id": job.array_job_id}
        return Action(self.name, START, key, {"job": payload, "files": files},
                      "running" if job.state.active else f"ran and ended "
                      f"{job.state.value.lower()} between cycles")

    # -- apply

    def apply(self, action: Action) -> Outcome:
        if action.kind == START:
            outcome = self._start_one(action, *self._version())
            if outcome.status.delivered:
                self._delivered_now.add(action.key)
            return outcome
        if action.kind == STOP:
            return self._apply_stop(action)
        return Outcome.permanent(action, f"unknown action kind {action.kind!r}")

    def apply_many(self, actions: Sequence[Action]) -> list[Outcome]:
        """This cycle's starts, outbox retries included: the runs of one job id in order of
        their start, one at a time; different job ids ``concurrency`` at a time. A run whose
        start did not get through holds back the later runs of its job, so cc-backend, which
        keeps one record per job id for 24 hours, never gets a later run first."""
        self.halted = None
        self._delivered_now = set()  # earlier cycles' deliveries are in the snapshot
        actions = list(actions)
        version, why = self._version() if actions else (None, "")
        groups: dict[tuple[str, int] | str, list[int]] = {}
        for index, action in enumerate(actions):
            parts = RunKey.parse(action.key)
            groups.setdefault(action.key if parts is None else parts.job, []).append(index)
        outcomes: list[Outcome | None] = [None] * len(actions)
        batch = {a.key for a in actions}

        def run_group(indices: list[int]) -> None:
            waits: str | None = None
            for index in sorted(indices, key=lambda i: (_start_of(actions[i].key),
                                                        actions[i].key)):
                action = actions[index]
                reason = waits or self._earlier_run_queued(action.key, batch)
                if reason is not None:
                    outcome = Outcome.transient(action, reason)
                else:
                    try:
                        outcome = self._start_one(action, version, why)
                    except Exception as exc:  # one action's bug must not lose the others
                        outcome = Outcome.transient(action, f"{type(exc).__name__}: {exc}")
                outcomes[index] = outcome
                if outcome.status.delivered:
                    self._delivered_now.add(action.key)
                if outcome.status is Status.TRANSIENT and waits is None:
                    parts = RunKey.parse(action.key)
                    if parts is not None:
                        waits = f"waits for run {parts.start} of job {parts.job_id}"

        workers = max(1, min(self.concurrency, len(groups)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run_group, groups.values()))
        return [o if o is not None else Outcome.transient(a, "not applied")
                for o, a in zip(outcomes, actions)]

    def _version(self) -> tuple[str | None, str]:
        """The API version to speak: configured, or asked of cc-backend once per process."""
        if self.configured_version:
            return self.configured_version, ""
        with self._detect_lock:
            if self._detected is None:
                found, why = detect_api_version(self.client, self.cc_cluster)
                if found is None:
                    return None, why
                self._detected = self.api_version = found
                log.info("cc-backend's API version found", extra={"fields": {
                    "api_version": found}})
            return self._detected, ""

    def _ours(self, key: str) -> bool:
        """Whether slurm-sync delivered this run's start (an earlier cycle, or this one)."""
        return (key in self._snapshot.delivered.get(START, frozenset())
                or key in self._delivered_now)

    def _earlier_run_queued(self, key: str, batch: set[str]) -> str | None:
        """Why this start waits for an earlier run of its job whose start is in the outbox and
        not in this batch (not due yet, or deferred by --limit); None when none is."""
        parts = RunKey.parse(key)
        if parts is None:
            return None
        earlier = [p.start for k in self._snapshot.queued.get(START, frozenset())
                   if k not in batch and not self._ours(k)
                   and (p := RunKey.parse(k)) is not None and p.job == parts.job
                   and p.start < parts.start]
        if not earlier:
            return None
        return f"waits for run {min(earlier)} of job {parts.job_id} (queued in the outbox)"

    def _start_one(self, action: Action, version: str | None, why: str) -> Outcome:
        if action.payload.get("adopt"):
            return Outcome.already_done(action, "cc-backend lists it running")
        if "skip" in action.payload:
            return Outcome(action, Status.PERMANENT, f"not sent: {action.payload['skip']}")
        if self.halted:
            return Outcome.transient(action, f"not sent: {self.halted}")
        if version is None:
            return Outcome.transient(action, f"not sent: cannot tell cc-backend's API version "
                                             f"({why})")
        converted = for_version(action.payload, START, version)
        payload = dict(converted["job"])
        if "jobScript" not in (payload.get("metaData") or {}):
            payload["metaData"] = self._with_files(dict(payload.get("metaData") or {}),
                                                   action.payload.get("files") or {})
        action = replace(action, payload={**converted, "job": payload})
        reply = self.client.post("/api/jobs/start_job/", json=payload)
        if reply.status == 422:
            return self._resolve_422(action, payload)
        error = _schema_error(reply)
        if error is not None:
            self._halt(version, "start_job", error)
            return Outcome.transient(action, reply.describe())
        return outcome_of(action, reply)

    def _resolve_422(self, action: Action, body: Mapping[str, Any]) -> Outcome:
        """cc-backend has a run of this job id within 24 hours: ask it which (its job list,
        filtered here by jobId: it has no such filter), never guess."""
        job_id, cluster, start = int(body["jobId"]), str(body["cluster"]), int(body["startTime"])
        held = self._runs_in_cc(job_id, cluster, start, start)
        if isinstance(held, dict) and start not in held:
            upper = max(int(time.time()), start) + DUPLICATE_WINDOW
            held = self._runs_in_cc(job_id, cluster, start - DUPLICATE_WINDOW + 1, upper)
        if isinstance(held, str):
            return Outcome.transient(action, f"422 from cc-backend, and its job list cannot "
                                             f"be read to tell which run it holds: {held}")
        if start in held:
            return Outcome.already_done(action, f"cc-backend has this run (422; its job list "
                                                f"shows job {job_id} started at {start})")
        if not held:
            return Outcome.transient(action, f"422 from cc-backend, but its job list shows no "
                                             f"run of job {job_id} near {start}; sent again "
                                             f"later")
        running = [s for s, state in held.items() if state == "running"]
        other = max(running) if running else max(held)
        state = held[other]
        slurm_cluster = action.key.split("/")[0]
        if other > start:
            return Outcome.permanent(action, (
                f"cc-backend holds a later run of job {job_id} (started at {other}, {state}); "
                f"it refuses the earlier run that started at {start} (422)"))
        # cc-backend refuses any run within 24 h of another of the same job id, stopped or not:
        # sending it again can never succeed, so it is refused for good, and said why.
        whose = ("which slurm-sync started" if self._ours(f"{slurm_cluster}/{job_id}/{other}")
                 else "which slurm-sync did not start")
        return Outcome.permanent(action, (
            f"cc-backend keeps one record per job id and cluster for 24 h: run {other} of job "
            f"{job_id} ({state}, {whose}) holds it, so the run that started at {start} cannot "
            f"be recorded (422)"))

    def _runs_in_cc(self, job_id: int, cluster: str, lo: int, hi: int) -> dict[int, str] | str:
        """{start time: state} of the runs of ``job_id`` on ``cluster`` that cc-backend lists
        with a start in [lo, hi] (paged), or why the list cannot be read."""
        found: dict[int, str] = {}
        page = 1
        while True:
            reply = self.client.get("/api/jobs/", params={
                "cluster": cluster, "start-time": f"{lo}-{hi}", "page": page,
                "items-per-page": self.page_size})
            if not reply.ok or not isinstance(reply.body, Mapping):
                return reply.describe()
            jobs = reply.body.get("jobs") or []
            for item in jobs:
                try:
                    if int(item["jobId"]) == job_id and item.get("cluster", cluster) == cluster:
                        found[int(item["startTime"])] = str(item.get("jobState") or "")
                except (KeyError, TypeError, ValueError):
                    continue
            if len(jobs) < self.page_size:
                return found
            page += 1

    def _halt(self, version: str, what: str, error: str) -> None:
        how = "as configured" if self.configured_version else "as found"
        self.halted = (
            f"cc-backend refuses the schema of {what} ({error}) sent for API {version} ({how}): "
            f"set connectors.clustercockpit.api_version to cc-backend's version, \"1.4\" or "
            f"\"1.5\"; the actions wait in the outbox")
        if not self.configured_version:
            with self._detect_lock:
                self._detected = None  # ask again next cycle

    def _apply_stop(self, action: Action) -> Outcome:
        if self.halted:
            return Outcome.transient(action, f"not sent: {self.halted}")
        version, why = self._version()
        if version is None:
            return Outcome.transient(action, f"not sent: cannot tell cc-backend's API version "
                                             f"({why})")
        reply = self.client.post("/api/jobs/stop_job/",
                                 json=for_version(action.payload, STOP, version))
        if reply.status in (404, 422):
            return Outcome.already_done(action, f"already stopped or unknown "
                                                f"({reply.describe()})")
        error = _schema_error(reply)
        if error is not None:
            self._halt(version, "stop_job", error)
            return Outcome.transient(action, reply.describe())
        return outcome_of(action, reply)

    def _with_files(self, meta: dict[str, str], files: Mapping[str, Any]) -> dict[str, str]:
        """metaData with the job script (and the environment when asked), as strings."""
        if not (self.want_script or self.want_env) or self.slurm is None:
            return meta
        job_id = int(files.get("job_id") or 0)
        try:
            found = self.slurm.reader.job_files(job_id, files.get("array_job_id"))
        except SlurmError as exc:
            meta["slurmSyncNotes"] = _join(meta.get("slurmSyncNotes"),
                                           f"job script not read: {exc}")
            return meta
        if self.want_script:
            if found.script is not None:
                meta["jobScript"] = found.script
            else:
                meta["slurmSyncNotes"] = _join(meta.get("slurmSyncNotes"),
                                               f"no job script: {found.reason}")
        if self.want_env and found.environment is not None:
            env = "\n".join(found.environment)
            if len(env) > self.env_limit:
                env = env[: self.env_limit] + "\n[cut at environment_max_bytes]"
            meta["slurmInfo"] = meta.get("slurmInfo", "") + "\nENV:\n====\n" + env
        return meta

    # -- check

    def check(self) -> list[str]:
        reply = self.client.get("/api/jobs/", params={
            "state": "running", "cluster": self.cc_cluster or "", "items-per-page": 1})
        if reply.status == 401:
            return ["cc-backend refuses the token (401): is it an api-role JWT?"]
        if not reply.ok:
            return [f"cc-backend: {reply.describe()}"]
        found, why = detect_api_version(self.client, self.cc_cluster)
        if found is None:
            return [f"cannot tell cc-backend's API version ({why}): set "
                    f"connectors.clustercockpit.api_version"]
        if self.configured_version and self.configured_version != found:
            return [f"api_version is {self.configured_version} but cc-backend answers as "
                    f"{found}: set api_version to \"{found}\", or leave it out to have it "
                    f"found"]
        if not self.configured_version:
            with self._detect_lock:
                self._detected = self.api_version = found
        return []


def _token(text: str, json_key: str | None) -> str:
    """The token itself, or the string at ``json_key`` when the file is a JSON document;
    errors name the key, never the content."""
    if not json_key:
        return text
    where = "$.connectors.clustercockpit.token_json_key"
    try:
        node: Any = json.loads(text)
    except ValueError:
        raise ConfigError(f"{where}: the token file is not JSON") from None
    for part in json_key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{where}: the token file has no {json_key!r}")
        node = node[part]
    if not isinstance(node, str) or not node.strip():
        raise ConfigError(f"{where}: {json_key!r} in the token file is not a non-empty string")
    problem = header_problem(node)
    if problem:
        raise ConfigError(f"{where}: {json_key!r} in the token file {problem}")
    return node


def _start_of(key: str) -> int:
    parts = RunKey.parse(key)
    return parts.start if parts is not None else 0


def _join(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second



# --- slurm-sync clustercockpit discover-accelerators ---------------------------------------------

NVIDIA_SMI_QUERY = ["--query-gpu=index,pci.bus_id", "--format=csv,noheader"]


def accelerators_block(hostname: str, nvidia_smi_csv: str) -> dict[str, Any]:
    """`accelerators_block("gpu1", "0, 00000000:03:00.0\\n")` is the config block for that host:
    ``{"accelerators": {"gpu1": {"0": "00000000:03:00.0"}}}``. A line that is not
    ``index, bus id`` is a ValueError naming it."""
    table: dict[str, str] = {}
    for number, line in enumerate(nvidia_smi_csv.splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1]:
            raise ValueError(f"nvidia-smi line {number} is not 'index, pci.bus_id': {line!r}")
        table[parts[0]] = parts[1]
    if not table:
        raise ValueError("nvidia-smi listed no GPU")
    return {"accelerators": {hostname: table}}


def discover_accelerators_command(ctx: CommandContext) -> int:
    """``slurm-sync clustercockpit discover-accelerators``: print the accelerators block of
    this node; needs no config and changes nothing."""
    out, err = ctx.out, ctx.err
    smi = shutil.which("nvidia-smi")
    if smi is None:
        err.print("nvidia-smi is not on PATH: this node has no NVIDIA driver tools, so there is "
                  "nothing to discover here (run this on a GPU node).", highlight=False)
        return EXIT_FAILED
    try:
        done = subprocess.run([smi, *NVIDIA_SMI_QUERY], capture_output=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        err.print(f"nvidia-smi did not run: {exc}", highlight=False, markup=False)
        return EXIT_FAILED
    if done.returncode != 0:
        first = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        err.print(f"nvidia-smi failed (exit {done.returncode}): {first[0] if first else ''}",
                  highlight=False, markup=False)
        return EXIT_FAILED
    try:
        block = accelerators_block(socket.gethostname().split(".")[0],
                                   done.stdout.decode(errors="replace"))
    except ValueError as exc:
        err.print(str(exc), highlight=False, markup=False)
        return EXIT_FAILED
    out.print_json(json.dumps(block))
    return EXIT_OK
