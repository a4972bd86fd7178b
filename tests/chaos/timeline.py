"""The simulated cluster's life, decided once from a seed: jobs, their runs, and what Slurm
shows of each at any moment.

    timeline = build_timeline(Scenario.short(seed=7), t0=time.time() + 3)
    Path("timeline.json").write_text(json.dumps(timeline.to_dict()))
    squeue_state(timeline.jobs[0], now)     # what squeue shows of that job at ``now``

Time is real time, compressed: jobs run 0-40 s and the syncer polls every 2 s, so the clock the
stand-in commands read (``time.time()``) is the clock slurm-sync reads. Everything else here is
pure: the stand-ins (``slurmsim.py``) and the checks (``check.py``) ask the same functions, so the
two cannot disagree about what Slurm said.

What a job can do:
- run once and end COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY or NODE_FAIL; some run
  shorter than the poll interval (0 or 1 s), some on several nodes, some with GPUs;
- be requeued: a run ends REQUEUED or PREEMPTED and the same job id runs again a few seconds
  later with a new start time and ``restart_cnt`` one higher (sometimes twice);
- be an array task (job ids as Slurm gives them: the last task keeps the array's id);
- be cancelled while pending, so it never starts (Slurm then sets start = end = cancel time).

What Slurm shows:
- squeue: PENDING from submit, RUNNING, COMPLETING for a second after the end, then the end
  state for ``min_job_age`` seconds (with its cores, not its GPU indices), then nothing;
- sacct: the accounting record lags: a run shows RUNNING only ``start_lag`` seconds after it
  started, and its end only ``end_lag`` seconds after it ended; ``-D`` shows every run of a
  requeued job, without it only the latest.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ACCOUNTS",
    "CORES_PER_SOCKET",
    "GPUS_PER_NODE",
    "USERS",
    "Job",
    "Run",
    "Scenario",
    "SlurmState",
    "Timeline",
    "build_timeline",
    "sacct_records",
    "squeue_state",
]

CORES_PER_SOCKET = 16
SOCKETS = 2
GPUS_PER_NODE = 4
CPU_HOSTS = [f"n{i:03d}" for i in range(1, 129)]
GPU_HOSTS = [f"g{i:02d}" for i in range(1, 17)]
USERS = [f"user{i:02d}" for i in range(40)]
ACCOUNTS = ["astro", "bio", "chem", "climate", "hep", "ml"]
END_STATES = (  # (state, weight, exit code, signal)
    ("COMPLETED", 70, 0, 0),
    ("FAILED", 10, 1, 0),
    ("CANCELLED", 7, 0, 15),
    ("TIMEOUT", 6, 0, 15),
    ("OUT_OF_MEMORY", 4, 0, 9),
    ("NODE_FAIL", 3, 0, 9),
)
COMPLETING_SECONDS = 1


@dataclass(frozen=True)
class Scenario:
    """How big and how nasty one run of the suite is. Times are seconds from the timeline's t0."""

    seed: int = 1
    service: str = "clustercockpit"  # or "bank" (services.py)
    jobs: int = 250
    span: float = 40.0  # submissions spread over [0, span]
    max_duration: int = 20
    short_share: float = 0.30  # runs of 0 or 1 s: shorter than the poll interval
    requeue_share: float = 0.05
    cancel_pending_share: float = 0.04
    array_share: float = 0.08  # share of jobs that are array tasks
    gpu_share: float = 0.15
    multinode_share: float = 0.10
    min_job_age: int = 30  # squeue's MinJobAge, compressed like the rest (long run: Slurm's 300)
    poll: float = 2.0
    # faults of the harness (see harness.py)
    kills: int = 1
    syncer_outage: float = 12.0
    cc_outage: float = 20.0
    squeue_failures: int = 2
    sacct_empty: int = 1
    slow_answers: int = 1
    slow_seconds: float = 5.0
    cc_error_share: float = 0.08
    cc_timeout_share: float = 0.02
    cc_reset_share: float = 0.02
    cc_hang: float = 2.0
    cc_rate_limit: int | None = 60
    cc_latency: float = 0.003
    cc_version: str = "1.5.4"
    max_drain: float = 120.0
    # the Buildkite run (services.py): ``jobs`` are Buildkite jobs, sbatch'd by the connector;
    # the timeline holds ``background_jobs`` of other users beside them
    background_jobs: int = 30
    build_cancel_share: float = 0.15
    sbatch_failures: int = 0  # exit 1, nothing submitted
    sbatch_lost: int = 0  # submitted, yet exit 1 ("Socket timed out"): the answer lost
    sbatch_hangs: int = 0  # submitted, the answer comes after slurm.timeout
    sbatch_kills: int = 0  # submitted and answered, then its cycle is SIGKILLed
    scancel_failures: int = 0

    @classmethod
    def short(cls, seed: int = 1, **changes: Any) -> Scenario:
        """About two minutes of wall time: a few hundred jobs, one or two kills, short outages."""
        if changes.get("service") == "buildkite":
            changes = {**BUILDKITE_SHORT, **changes}
        if changes.get("service", "clustercockpit") == "clustercockpit":
            # a MinJobAge longer than a cycle's window (60 s overlap + 2 s + 10 s margin): the
            # steady cycles ask sacct for ended runs only, the longer windows after the stop,
            # the kill and the outage for running ones too; both paths meet sacct's faults
            changes = {"min_job_age": 75, **changes}
        return cls(seed=seed, **changes)

    @classmethod
    def long(cls, seed: int = 1, jobs: int = 1000, **changes: Any) -> Scenario:
        """The issue's run: 1,000 jobs over 4.5 minutes, a 60 s syncer stop, a 75 s cc-backend
        outage, five kills, 20 % of requests faulted."""
        base: dict[str, Any] = dict(
            seed=seed, jobs=jobs, span=240.0 * jobs / 1000, max_duration=40, kills=5,
            syncer_outage=60.0, cc_outage=75.0, cc_error_share=0.12, cc_timeout_share=0.03,
            cc_reset_share=0.03, cc_rate_limit=40, min_job_age=300, max_drain=720.0,
            slow_answers=2)
        if changes.get("service") == "buildkite":
            base.update(BUILDKITE_LONG)
        base.update(changes)
        return cls(**base)


#: The Buildkite run's faults of sbatch and scancel (other services have none).
# (A rate limit of 10 requests a second: the connector's bursts of build look-ups meet some
# 429s with Retry-After; at cc-backend's 60 or 40 none did.)
BUILDKITE_SHORT: dict[str, Any] = dict(
    jobs=150, sbatch_failures=2, sbatch_lost=1, sbatch_hangs=1, sbatch_kills=2,
    scancel_failures=1, cc_rate_limit=10)
BUILDKITE_LONG: dict[str, Any] = dict(
    background_jobs=60, sbatch_failures=4, sbatch_lost=3, sbatch_hangs=2, sbatch_kills=5,
    scancel_failures=3, cc_rate_limit=10,
    # builds keep coming for four minutes whatever their number: squeezed into 72 s (300 jobs)
    # the 60 s syncer stop and the 75 s outage left no time between them to submit, and every
    # job went out after the outage in a few arrays, with sbatch's faults taken back unfired
    span=240.0)


@dataclass
class Run:
    """One run of a job: where it ran, when, how it ended, and sacct's delays."""

    start: int
    end: int
    state: str  # the end state as sacct/squeue name it (REQUEUED, PREEMPTED for requeued runs)
    exit_code: int
    signal: int
    hosts: list[str]
    cores: list[list[int]]  # node-wide core ids per host
    gpus: list[list[int]]  # gres indices per host
    start_lag: int
    end_lag: int


@dataclass
class Job:
    """One Slurm job id (an array task is its own job id, as in Slurm)."""

    job_id: int
    name: str
    user: str
    account: str
    partition: str
    submit: int
    cpus_per_node: int
    nodes: int
    gpus_per_node: int
    time_limit: int  # minutes
    runs: list[Run] = field(default_factory=list)
    cancel_at: int | None = None  # cancelled while pending: never runs
    array_job_id: int = 0
    array_task_id: int | None = None
    array_size: int = 0
    requeue_gaps: list[int] = field(default_factory=list)

    @property
    def ends(self) -> int:
        """When the job is over for good (its last run ended, or it was cancelled)."""
        if self.cancel_at is not None:
            return self.cancel_at
        return self.runs[-1].end


@dataclass
class Timeline:
    """Everything the stand-ins and the checks need, JSON-able."""

    seed: int
    t0: float
    cluster: str
    min_job_age: int
    jobs: list[Job]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timeline:
        jobs = []
        for raw in data["jobs"]:
            raw = dict(raw)
            raw["runs"] = [Run(**r) for r in raw["runs"]]
            jobs.append(Job(**raw))
        return cls(seed=data["seed"], t0=data["t0"], cluster=data["cluster"],
                   min_job_age=data["min_job_age"], jobs=jobs)

    def runs(self) -> list[tuple[Job, int, Run]]:
        """Every run that started: (job, index, run)."""
        return [(j, i, r) for j in self.jobs for i, r in enumerate(j.runs)]

    @property
    def last_end(self) -> int:
        return max(j.ends for j in self.jobs)


def _pick_state(rng: random.Random) -> tuple[str, int, int]:
    total = sum(w for _, w, _, _ in END_STATES)
    point = rng.uniform(0, total)
    for name, weight, code, sig in END_STATES:
        point -= weight
        if point <= 0:
            return name, code, sig
    return END_STATES[0][0], END_STATES[0][2], END_STATES[0][3]


def _allocate(rng: random.Random, nodes: int, cpus: int, gpus: int
              ) -> tuple[list[str], list[list[int]], list[list[int]]]:
    pool = GPU_HOSTS if gpus else CPU_HOSTS
    hosts = sorted(rng.sample(pool, nodes))
    cores = []
    for _ in hosts:
        first = rng.randint(0, SOCKETS * CORES_PER_SOCKET - cpus)
        cores.append(list(range(first, first + cpus)))
    gpu_ids = []
    for _ in hosts:
        first = rng.randint(0, GPUS_PER_NODE - gpus) if gpus else 0
        gpu_ids.append(list(range(first, first + gpus)))
    return hosts, cores, gpu_ids


def _duration(rng: random.Random, scenario: Scenario, longest: int) -> int:
    if rng.random() < scenario.short_share:
        return rng.choice((0, 1, 1))
    return rng.randint(2, max(2, longest))


def _run(rng: random.Random, job: Job, start: int, scenario: Scenario, later: bool = False
         ) -> Run:
    name, code, sig = _pick_state(rng)
    hosts, cores, gpus = _allocate(rng, job.nodes, job.cpus_per_node, job.gpus_per_node)
    end_lag = rng.randint(1, 8) if rng.random() < 0.9 else rng.randint(9, 20)
    longest = scenario.max_duration // 2 if later else scenario.max_duration
    return Run(start=start, end=start + _duration(rng, scenario, longest), state=name,
               exit_code=code,
               signal=sig, hosts=hosts, cores=cores, gpus=gpus,
               start_lag=rng.randint(0, 2), end_lag=end_lag)


def build_timeline(scenario: Scenario, t0: float, cluster: str = "sim2411",
                   users: Sequence[str] | None = None) -> Timeline:
    """The seeded timeline of ``scenario.jobs`` job ids starting at epoch ``t0``, owned by
    ``users`` (made-up names by default)."""
    rng = random.Random(scenario.seed)
    pool = list(users or USERS)
    base = int(t0)
    next_id = 1000 + rng.randint(0, 500)
    jobs: list[Job] = []
    # submissions, in time order; arrays take several ids at one submit time
    submits = sorted(base + int(rng.uniform(0, scenario.span)) for _ in range(scenario.jobs))
    i = 0
    while len(jobs) < scenario.jobs:
        submit = submits[min(i, len(submits) - 1)]
        i += 1
        gpus = rng.choice((1, 2, 4)) if rng.random() < scenario.gpu_share else 0
        nodes = rng.choice((2, 2, 3, 4)) if rng.random() < scenario.multinode_share else 1
        cpus = rng.choice((1, 2, 4, 8, 16, 32)) if nodes == 1 else rng.choice((8, 16, 32))
        common = dict(
            user=rng.choice(pool), account=rng.choice(ACCOUNTS),
            partition="gpu" if gpus else "main", submit=submit, cpus_per_node=cpus,
            nodes=nodes, gpus_per_node=gpus, time_limit=rng.choice((10, 30, 60, 120)),
        )
        left = scenario.jobs - len(jobs)
        if left >= 2 and rng.random() < scenario.array_share / 3:
            size = min(left, rng.randint(2, 6))
            master = next_id
            next_id += size
            # Slurm splits tasks off under new ids; the last task keeps the array's id.
            ids = [master + 1 + k for k in range(size - 1)] + [master]
            for task, job_id in enumerate(ids):
                jobs.append(Job(job_id=job_id, name=f"array-{master}", array_job_id=master,
                                array_task_id=task, array_size=size, **common))
        else:
            jobs.append(Job(job_id=next_id, name=f"job-{next_id}", **common))
            next_id += 1
    for job in jobs:
        wait = rng.randint(0, 6)
        if job.array_task_id:
            wait += job.array_task_id * rng.randint(0, 3)  # tasks start one after the other
        if not job.array_job_id and rng.random() < scenario.cancel_pending_share:
            job.cancel_at = job.submit + rng.randint(1, 8)
            continue
        start = job.submit + wait
        job.runs.append(_run(rng, job, start, scenario))
        if not job.array_job_id and rng.random() < scenario.requeue_share:
            times = 2 if rng.random() < 0.15 else 1
            for _ in range(times):
                last = job.runs[-1]
                last.state = "PREEMPTED" if rng.random() < 0.3 else "REQUEUED"
                last.exit_code, last.signal = 0, 15
                gap = rng.randint(3, 10)  # Slurm holds a requeued job back (BeginTime)
                job.requeue_gaps.append(gap)
                job.runs.append(_run(rng, job, last.end + gap, scenario, later=True))
    return Timeline(seed=scenario.seed, t0=t0, cluster=cluster,
                    min_job_age=scenario.min_job_age, jobs=jobs)


# --- what Slurm shows at a moment (pure) -------------------------------------------------------


@dataclass(frozen=True)
class SlurmState:
    """What one record shows: its state words, times, the run it is about (None: no run)."""

    state: str  # PENDING, RUNNING, COMPLETING, or an end state
    run: int | None
    start: int
    end: int
    restart: int
    reason: str = "None"
    allocation: bool = False  # squeue shows the run's cores (job_resources)
    gpus: bool = False  # squeue shows the GPU indices (gres_detail)
    eligible: int = 0
    submission: int = 0


def squeue_state(job: Job, now: float, min_job_age: int) -> SlurmState | None:
    """What ``squeue --states=all`` shows of ``job`` at ``now``; None when slurmctld does not
    hold it (not submitted yet, or ended more than ``min_job_age`` seconds ago)."""
    if now < job.submit:
        return None
    if job.cancel_at is not None:
        if now < job.cancel_at:
            return SlurmState("PENDING", None, 0, 0, 0, "Priority", eligible=job.submit,
                              submission=job.submit)
        if now >= job.cancel_at + min_job_age:
            return None
        return SlurmState("CANCELLED", None, job.cancel_at, job.cancel_at, 0, "None",
                          eligible=job.submit, submission=job.submit)
    for index, run in enumerate(job.runs):
        eligible = job.submit if index == 0 else (
            job.runs[index - 1].end + job.requeue_gaps[index - 1])
        if now < run.start:
            reason = "Resources" if index == 0 else "BeginTime"
            return SlurmState("PENDING", None, 0, 0, index, reason, eligible=eligible,
                              submission=job.submit)
        last = index == len(job.runs) - 1
        if now < run.end:
            return SlurmState("RUNNING", index, run.start, run.start + job.time_limit * 60,
                              index, allocation=True, gpus=True, eligible=eligible,
                              submission=job.submit)
        if not last:
            continue  # requeued: pending again until the next run starts (loop goes on)
        if now < run.end + COMPLETING_SECONDS:
            return SlurmState("COMPLETING", index, run.start, run.end, index,
                              allocation=True, gpus=True, eligible=eligible,
                              submission=job.submit)
        if now < run.end + min_job_age:
            return SlurmState(run.state, index, run.start, run.end, index, allocation=True,
                              eligible=eligible, submission=job.submit)
        return None
    return None  # pragma: no cover - every job has a run or a cancel time


def sacct_records(job: Job, now: float, duplicates: bool) -> list[SlurmState]:
    """The accounting records of ``job`` at ``now``: one per run slurmdbd has heard of (every
    run with ``duplicates``, as ``-D``; else only the latest), with the lags."""
    if now < job.submit:
        return []
    if job.cancel_at is not None:
        if now < job.cancel_at + 1:
            return [SlurmState("PENDING", None, 0, 0, 0, eligible=job.submit,
                               submission=job.submit)]
        return [SlurmState("CANCELLED", None, job.cancel_at, job.cancel_at, 0,
                           eligible=job.submit, submission=job.submit)]
    records: list[SlurmState] = []
    for index, run in enumerate(job.runs):
        eligible = job.submit if index == 0 else job.runs[index - 1].end + job.requeue_gaps[
            index - 1]
        submission = job.submit if index == 0 else job.runs[index - 1].end
        if now < run.start + run.start_lag:
            records.append(SlurmState("PENDING", None, 0, 0, index, eligible=eligible,
                                      submission=submission))
            break
        if now < run.end + run.end_lag:
            records.append(SlurmState("RUNNING", index, run.start, 0, index,
                                      eligible=eligible, submission=submission))
            break
        records.append(SlurmState(run.state, index, run.start, run.end, index,
                                  eligible=eligible, submission=submission))
        if index + 1 < len(job.runs) and now < job.runs[index + 1].start + job.runs[
                index + 1].start_lag:
            # requeued and not started again yet: slurmdbd has a new pending record
            records.append(SlurmState("PENDING", None, 0, 0, index + 1,
                                      eligible=run.end + job.requeue_gaps[index],
                                      submission=run.end))
            break
    return records if duplicates else records[-1:]
