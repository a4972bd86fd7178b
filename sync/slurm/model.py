"""The job model every Slurm version's JSON is normalized into.

    >>> job = Job(job_id=7, name="train", state=JobState.RUNNING, cluster="lab2411")
    >>> job.identity
    ('lab2411', 7, None)
    >>> job.state.active
    True

Only ``sync/slurm/`` builds these; everything else reads them. Times are epoch seconds (UTC) or
None when Slurm has not set them; ``time_limit`` is minutes or None when unlimited.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import Enum
from typing import Any

__all__ = [
    "ExitCode",
    "Job",
    "JobState",
    "NodeAllocation",
    "NodeTopology",
    "Producer",
    "Skipped",
]


class JobState(str, Enum):
    """A job's base state, one per job. Slurm's flags (REQUEUED, ...) are kept in ``Job.flags``.

    COMPLETING is its own member: the job has ended but still holds its nodes. REQUEUED is a
    run that ended because the job was requeued (sacct lists it beside the job's new run); a job
    waiting again after a requeue is PENDING with the REQUEUED flag.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    COMPLETING = "COMPLETING"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    REQUEUED = "REQUEUED"
    UNKNOWN = "UNKNOWN"

    @property
    def active(self) -> bool:
        """`s.active` is true while the job waits for or holds resources."""
        return self in _ACTIVE

    @property
    def finished(self) -> bool:
        """`s.finished` is true once the job has ended for good (COMPLETING is not finished)."""
        return self not in _ACTIVE and self is not JobState.UNKNOWN


_ACTIVE = frozenset(
    {JobState.PENDING, JobState.RUNNING, JobState.SUSPENDED, JobState.COMPLETING}
)


@dataclass(frozen=True)
class ExitCode:
    """How a job ended: the script's return code, or the signal that killed it.

    Either may be None: the job has not ended, or the producer cannot tell (Slurm up to 23.02
    reports SUCCESS for any normal exit in sacct; then the state decides success).
    """

    return_code: int | None = None
    signal: int | None = None


@dataclass(frozen=True)
class NodeAllocation:
    """What a job holds on one node.

    ``cores`` are (socket, core-in-socket) pairs as Slurm reports them (socket -1: not known,
    in an ambiguous 21.08 allocation). ``cpu_ids`` are node-wide
    core ids (socket x cores_per_socket + core), None when they cannot be known: Slurm 21.08's
    flat core keys (``ambiguous``), or an older layout read without the node's topology.
    """

    hostname: str
    cores: tuple[tuple[int, int], ...] = ()
    cpu_ids: tuple[int, ...] | None = None
    gpu_ids: tuple[int, ...] = ()
    memory_mb: int | None = None
    ambiguous: bool = False


@dataclass(frozen=True)
class NodeTopology:
    """A node's layout as Slurm configures it, for turning (socket, core) into a core id."""

    sockets: int
    cores_per_socket: int
    threads_per_core: int = 1


@dataclass(frozen=True)
class Job:
    """One Slurm job, or one task of an array, as any Slurm version reports it.

    Identity for delivery is ``(cluster, job_id, start_time)``: a requeued job that starts
    again is a new identity. ``cpus`` is what the job was given once it started and what it asks
    for before (as squeue reports it; sacct's pending records say the same). ``shared`` is how
    the job shares its nodes as squeue says it: ``none`` (exclusive), ``user``, ``mcs``,
    ``oversubscribe``, ``topo``, or None when the job asked nothing (the partition decides).
    """

    job_id: int
    name: str = ""
    state: JobState = JobState.UNKNOWN
    flags: tuple[str, ...] = ()
    reason: str = ""
    cluster: str | None = None
    user: str | None = None
    uid: int | None = None
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    array_job_id: int | None = None
    array_task_id: int | None = None
    array_tasks_pending: str | None = None
    het_job_id: int | None = None
    het_job_offset: int | None = None
    submit_time: int | None = None
    eligible_time: int | None = None
    start_time: int | None = None
    end_time: int | None = None
    time_limit: int | None = None
    node_count: int | None = None
    cpus: int | None = None
    nodelist: str = ""
    hosts: tuple[str, ...] = ()
    allocations: tuple[NodeAllocation, ...] = ()
    gres_detail: tuple[str, ...] = ()
    tres_requested: Mapping[str, int] = field(default_factory=dict, hash=False)
    tres_allocated: Mapping[str, int] = field(default_factory=dict, hash=False)
    shared: str | None = None
    comment: str = ""
    admin_comment: str = ""
    system_comment: str = ""
    exit_code: ExitCode = ExitCode()
    work_dir: str | None = None
    restart_count: int = 0
    source: str = "squeue"

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> Job:
        """`Job.from_fields(d)` builds a Job from a dict naming fields (others take defaults).

        The parser's hot path: one dict update instead of a frozen ``__setattr__`` per field
        (12 us of a 40 us record on 10,000 jobs). Unknown names raise TypeError as ``Job()`` does.
        """
        unknown = values.keys() - _JOB_DEFAULTS.keys()
        if "job_id" not in values:
            raise TypeError("Job needs a job_id")
        if unknown:
            raise TypeError(f"Job has no field(s) {sorted(unknown)}")
        job = object.__new__(cls)
        state = dict(_JOB_DEFAULTS)
        state.update(values)
        for name, make in _JOB_FACTORIES.items():
            if name not in values:
                state[name] = make()
        job.__dict__.update(state)
        return job

    @property
    def live(self) -> bool:
        """`job.live` is true for slurmctld's full record of the job (``squeue --json`` or
        ``scontrol show job -d``): it knows a running job's allocation, as sacct and squeue's
        plain listing do not."""
        return self.source in ("squeue", "scontrol")

    @property
    def identity(self) -> tuple[str | None, int, int | None]:
        """`job.identity` is (cluster, job_id, start_time), the key a delivery is recorded by."""
        return (self.cluster, self.job_id, self.start_time)

    @property
    def display_id(self) -> str:
        """`job.display_id` is the id as users see it: ``123``, ``123_4`` or ``123+1``."""
        if self.array_job_id is not None and self.array_task_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        if self.array_job_id is not None and self.array_tasks_pending:
            return f"{self.array_job_id}_[{self.array_tasks_pending}]"
        if self.het_job_id is not None and self.het_job_offset is not None:
            return f"{self.het_job_id}+{self.het_job_offset}"
        return str(self.job_id)

    def to_dict(self) -> dict[str, Any]:
        """`job.to_dict()` is plain JSON-ready data (state as its name, TRES as dicts)."""
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Mapping):
                value = dict(value)
            elif item.name in ("allocations", "exit_code"):
                value = (
                    [asdict(a) for a in value] if item.name == "allocations" else asdict(value)
                )
            elif isinstance(value, Enum):
                value = value.value
            data[item.name] = value
        data["display_id"] = self.display_id
        return data

    @property
    def gpu_count(self) -> int:
        """`job.gpu_count` counts GPU indices over all nodes (0 when none are known)."""
        return sum(len(a.gpu_ids) for a in self.allocations)


_JOB_DEFAULTS: dict[str, Any] = {
    f.name: (None if f.default is MISSING else f.default) for f in fields(Job)
}
_JOB_FACTORIES = {
    f.name: f.default_factory for f in fields(Job) if f.default_factory is not MISSING
}


@dataclass(frozen=True)
class Producer:
    """Which Slurm made a document: the plugin (``v0.0.42``) and the release (``24.11.5``)."""

    plugin: str = ""
    release: str = ""
    version: tuple[int, int, int] = (0, 0, 0)
    cluster: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A record the parser could not read: where it was and why. The rest still parses."""

    index: int
    job_id: object | None
    reason: str
