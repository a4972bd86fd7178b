"""The values that pass between the Buildkite connector's modules: what Buildkite says of a job
(``BKJob``, ``Remote``), which Buildkite job a Slurm job of ours runs (``Ref``, ``SlurmRun``),
what ``observe`` hands ``plan`` (``Observed``), the action kinds and the job states.

    observed = Observed(remote=Remote(complete=True, scheduled=(job,)), cluster="hpc1")
    plan(view, snapshot, Direction.BOTH, Scope(), observed, settings)

``Observed`` holds what Buildkite and Slurm answered this cycle, nothing decided: which job is
submitted, cancelled or pruned is ``plan``'s word. The helpers here are pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from slurm_sync.slurm.model import Job

__all__ = [
    "BATCH",
    "BUILD_FINISHED",
    "CANCEL",
    "ENDED",
    "FINISH",
    "GONE",
    "JOB_STATES",
    "NAME",
    "NOTIFY",
    "ONE",
    "PRUNE",
    "REFUSED_ACQUIRE",
    "SIGNAL",
    "STILL_LOCKED",
    "SUBMIT",
    "TAKEN",
    "WAITING",
    "BKJob",
    "Observed",
    "Ref",
    "Remote",
    "SlurmRun",
    "matches_queue",
    "runs_of",
    "task_ids",
]

NAME = "buildkite"
#: The action kinds: sbatch a Buildkite job; scancel or SIGTERM its Slurm job; a timeline note
#: (Stacks); remove a build path a killed job left; tell Buildkite (Stacks) a job it asked
#: for cannot be run here.
SUBMIT, CANCEL, SIGNAL, NOTIFY, PRUNE, FINISH = (
    "submit", "cancel", "signal", "notify", "prune", "finish")

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
BATCH_ID = re.compile(r"^[0-9a-f]{32}$")
#: How the --comment of a Slurm job of ours starts: one Buildkite job, or an array's map file.
ONE, BATCH = "bk:", "bk-batch:"

# Every job state Buildkite documents (REST job data model, the GraphQL JobStates enum, the
# Stacks API's get-states), in what it means for the Slurm job that runs the Buildkite job:
#: it will not run, or is being stopped: a pending Slurm job is cancelled, a running agent gets
#: SIGTERM and, after cancel_grace_seconds, a full cancel
GONE = frozenset({"canceled", "canceling", "timed_out", "timing_out", "expired", "skipped",
                  "broken", "waiting_failed", "blocked_failed", "unblocked_failed"})
#: it ran and ended: a pending Slurm job is cancelled (its agent could only exit 27); a running
#: one is left to its agent, which is done with the job and exits by itself
ENDED = frozenset({"passed", "failed", "finished"})
#: an agent holds it: if our Slurm job is still pending, it is another agent (after
#: taken_grace_seconds, so our own agent that has just started is not mistaken for one)
TAKEN = frozenset({"assigned", "accepted", "running"})
#: not runnable yet, or runnable and waiting for an agent: the Slurm job is left alone
WAITING = frozenset({"pending", "waiting", "blocked", "unblocked", "limited",
                     "limiting", "scheduled"})
JOB_STATES = GONE | ENDED | TAKEN | WAITING
BUILD_FINISHED = frozenset({"passed", "failed", "canceled", "skipped", "not_run"})
# Agent exit codes (buildkite/agent): 27 the acquire was refused (taken, cancelled, finished),
# 28 the job stayed locked (waiting on a dependency) past the agent's retries.
REFUSED_ACQUIRE, STILL_LOCKED = 27, 28


@dataclass(frozen=True)
class Ref:
    """Which Buildkite job a Slurm job runs: pipeline slug, build number, job id."""

    pipeline: str
    build: int
    job: str

    def text(self) -> str:
        return f"{self.pipeline}/{self.build}/{self.job}"

    @classmethod
    def parse(cls, text: str) -> Ref | None:
        """`Ref.parse("app/12/<uuid>")`; None for anything else (never trusted blindly)."""
        parts = text.strip().split("/")
        if len(parts) != 3 or not SLUG.match(parts[0]) or not parts[1].isdigit():
            return None
        if not UUID.match(parts[2]):
            return None
        return cls(parts[0], int(parts[1]), parts[2])


@dataclass(frozen=True)
class BKJob:
    """A Buildkite job as one cycle saw it."""

    id: str
    state: str
    pipeline: str = ""
    build: int = 0
    rules: tuple[str, ...] = ()
    build_state: str | None = None
    priority: int = 0
    scheduled_at: str = ""

    @property
    def ref(self) -> Ref:
        return Ref(self.pipeline, self.build, self.id)


def _frozen(value: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class Remote:
    """What Buildkite said this cycle: ``complete`` when every call it took got through (a job
    missing from a complete answer means something; from an incomplete one, nothing)."""

    complete: bool = False
    paused: bool = False
    scheduled: tuple[BKJob, ...] = ()
    known: Mapping[str, BKJob] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scheduled", tuple(self.scheduled))
        object.__setattr__(self, "known", _frozen(self.known))


@dataclass(frozen=True)
class SlurmRun:
    """One of our Slurm jobs (or array tasks) and the Buildkite job it runs."""

    ref: Ref
    # what scancel takes: "1234", or "1234_5" for any task of an array, pending or running.
    # Never a running task's own job id: Slurm 22.05's plain scancel of that id answers 0 and
    # does nothing (job_str_signal finds no array of that id: ESLURM_INVALID_JOB_ID, which
    # scancel ignores on its cancel path), so the full cancel would never happen.
    slurm_id: str
    job: Job


@dataclass(frozen=True)
class Observed:
    """What ``observe`` read in one cycle, for ``plan``:

    - ``remote``: Buildkite's answer (``Remote()``, incomplete, when it could not be read);
    - ``batches``: array map files read, batch id -> the Buildkite job of each task;
    - ``gone_paths``: per-job build paths whose Slurm job a second squeue says is gone
      (Slurm job id -> the folder's mtime);
    - ``taken_elsewhere``: Slurm ids (as scancel takes them) of our pending jobs whose
      Buildkite job an agent held, that a squeue made after Buildkite was read still showed
      pending: that agent is another's, not the one our job started since the cycle's squeue;
    - ``cluster``: Slurm's cluster name, for the keys of cancels and prunes (None: each job's).
    """

    remote: Remote = field(default_factory=Remote)
    batches: Mapping[str, tuple[Ref, ...]] = field(default_factory=dict)
    gone_paths: Mapping[int, float] = field(default_factory=dict)
    taken_elsewhere: frozenset[str] = frozenset()
    cluster: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", MappingProxyType(
            {k: tuple(v) for k, v in self.batches.items()}))
        object.__setattr__(self, "gone_paths", MappingProxyType(dict(self.gone_paths)))
        object.__setattr__(self, "taken_elsewhere", frozenset(self.taken_elsewhere))


def matches_queue(rules: Sequence[str], queue: str, tags: frozenset[str]) -> bool:
    """A job is ours when it asks for our queue and every other non-slurm_ rule is one of our
    tags (``k=v``, or ``k=*`` in the job's rules)."""
    asked_queue = None
    for rule in rules:
        key, _, value = rule.partition("=")
        if key.startswith("slurm_"):
            continue
        if key == "queue":
            asked_queue = value
            continue
        if rule not in tags and not (value == "*" and any(t.startswith(key + "=") for t in tags)):
            return False
    return asked_queue == queue


def runs_of(jobs: Iterable[Job], batches: Mapping[str, Sequence[Ref]],
            job_name: str) -> list[SlurmRun]:
    """Our Slurm jobs among ``jobs`` and the Buildkite job each runs, from its comment
    (``bk:<ref>``) or, for an array, its batch map (line i is task i)."""
    out = []
    for job in jobs:
        if job.name != job_name:
            continue
        comment = job.comment.strip()
        if comment.startswith(ONE):
            ref = Ref.parse(comment[len(ONE):])
            if ref is not None:
                out.append(SlurmRun(ref, str(job.job_id), job))
            continue
        if not comment.startswith(BATCH):
            continue
        refs = batches.get(comment[len(BATCH):], ())
        if job.array_task_id is not None and job.array_job_id is not None:
            if 0 <= job.array_task_id < len(refs):
                out.append(SlurmRun(refs[job.array_task_id],
                                    f"{job.array_job_id}_{job.array_task_id}", job))
        elif job.array_tasks_pending and job.array_job_id is not None:
            for task in task_ids(job.array_tasks_pending):
                if 0 <= task < len(refs):
                    out.append(SlurmRun(refs[task], f"{job.array_job_id}_{task}", job))
    return out


def task_ids(text: str) -> list[int]:
    """`task_ids("0-3,7")` is ``[0, 1, 2, 3, 7]``: squeue's array_task_string (maybe with a
    %limit) as task ids."""
    out: list[int] = []
    for part in text.split("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            out.extend(range(int(low), int(high or low) + 1))
    return out
