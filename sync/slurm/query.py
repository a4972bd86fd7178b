"""What to ask Slurm for, and which filters each version's ``--json`` output honours.

    >>> f = JobFilter(states=("R",), names=("buildkite",))
    >>> squeue_args(f, (24, 11, 5))
    ['--json', '--states=RUNNING,CONFIGURING,RESIZING', '--name=buildkite']
    >>> squeue_args(f, (22, 5, 8))         # 22.05 ignores filters with --json: filter afterwards
    ['--json']

Slurm's JSON serializer is the most expensive part of a cycle on a big cluster (a full
``squeue --json`` of 10,000 jobs took 4.2 s and 1.5 GB in squeue on 24.11, ``-t R`` 0.06 s), so
the reader passes every filter the version honours. Versions that ignore some filters dump more;
``JobFilter.matches`` then filters after parsing, with the same meaning, so callers see the same
jobs on every version:
- 24.05.1 and later honour all filters with ``--json`` (Slurm commit ff14834caa);
- 23.02 to 24.05.0 honour ``-j`` and ``-u`` only;
- 22.05 and earlier honour none (and the dump is cheap there).
Without ``states`` squeue shows only jobs that are not finished; the after-filter does the same.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime

from slurm_sync.errors import SlurmFormatError
from slurm_sync.slurm.model import Job, JobState

__all__ = [
    "WINDOW_ENDS",
    "WINDOW_RUNS",
    "JobFilter",
    "SacctWindow",
    "listing_args",
    "parse_version",
    "sacct_args",
    "squeue_args",
    "squeue_json_filters",
    "state_names",
]

# squeue/sacct state names and their short forms, to our base states.
_STATE_ALIASES: dict[str, JobState] = {
    "PD": JobState.PENDING,
    "R": JobState.RUNNING,
    "S": JobState.SUSPENDED,
    "CG": JobState.COMPLETING,
    "CD": JobState.COMPLETED,
    "CA": JobState.CANCELLED,
    "F": JobState.FAILED,
    "TO": JobState.TIMEOUT,
    "NF": JobState.NODE_FAIL,
    "PR": JobState.PREEMPTED,
    "BF": JobState.BOOT_FAIL,
    "DL": JobState.DEADLINE,
    "OOM": JobState.OUT_OF_MEMORY,
    "COMPLETE": JobState.COMPLETED,
}


def state_names(states: Iterable[str]) -> tuple[JobState, ...]:
    """`state_names(["R", "pending"])` is ``(RUNNING, PENDING)``; "all" is every state."""
    out: list[JobState] = []
    for raw in states:
        word = raw.strip().upper()
        if word == "ALL":
            return tuple(JobState)
        if word in _STATE_ALIASES:
            out.append(_STATE_ALIASES[word])
        elif word in JobState.__members__ and word != "UNKNOWN":
            out.append(JobState[word])
        else:
            raise SlurmFormatError("states", raw, "not a Slurm job state")
    return tuple(dict.fromkeys(out))


@functools.lru_cache(maxsize=64)
def _kept(states: tuple[str, ...]) -> frozenset[JobState]:
    """The base states a filter of ``states`` keeps, as a set: ``matches`` runs for every job
    of a listing (100,000 a cycle at scale), where reading the words again was half the
    cycle's CPU."""
    return frozenset(JobFilter(states=states).wanted_states())


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a query wants. Empty fields do not filter; ``states=()`` means "not finished"."""

    states: tuple[str, ...] = ()
    job_ids: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    partitions: tuple[str, ...] = ()

    def wanted_states(self) -> tuple[JobState, ...]:
        """The base states this filter keeps."""
        if not self.states:
            return tuple(s for s in JobState if s.active)
        return state_names(self.states)

    def matches(self, job: Job) -> bool:
        """`f.matches(job)` applies the filter after parsing, as Slurm would have."""
        if job.state not in _kept(self.states):
            return False
        if self.job_ids and not (
            job.job_id in self.job_ids
            or (job.array_job_id is not None and job.array_job_id in self.job_ids)
            or (job.het_job_id is not None and job.het_job_id in self.job_ids)
        ):
            return False
        if self.names and job.name not in self.names:
            return False
        if self.users and job.user not in self.users:
            return False
        if self.partitions:
            # A pending job may name several partitions ("main,gpu").
            wanted = set(self.partitions)
            if not wanted & set((job.partition or "").split(",")):
                return False
        return True


#: What a cycle's sacct window asks for: runs that were running at some time in the window
#: (sacct's ``-s R`` selects by the window, not by the state now: a run that started and ended
#: in it is listed, and so is the REQUEUED record of a requeued job's earlier run) and jobs that
#: ended in it. Never the pending queue, which sacct lists without ``-s`` (every job eligible
#: before the window's end): it grows with the queue and no connector plans from it. Seen on
#: the lab's 22.05, 24.11 and 26.05 alike.
WINDOW_RUNS = JobFilter(states=(
    "R", "S", "CD", "CA", "F", "TO", "NF", "PR", "BF", "DL", "OOM", "REQUEUED"))

#: The window of a cycle whose squeue listing vouches for it (the engine's ``window_filter``):
#: only jobs that ended in it, and the REQUEUED records of requeued jobs' earlier runs. On a
#: steady cluster nothing: ``-s R`` made sacct list every running job each cycle (1,000 running
#: on the fat-node lab: 4.8 MB of JSON, 0.3 s and 102 MB in sacct; 10,000: 47 MB, 3.5 s, 957 MB).
WINDOW_ENDS = JobFilter(states=(
    "CD", "CA", "F", "TO", "NF", "PR", "BF", "DL", "OOM", "REQUEUED"))


def parse_version(text: str) -> tuple[int, int, int]:
    """`parse_version("slurm 24.11.5")` is ``(24, 11, 5)``; "slurm-wlm 22.05.8" works too.

    Only ASCII digits count (``str.isdigit`` takes "²", which ``int`` refuses), at most six
    per part."""
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and parts[0].isascii() and parts[0].isdigit() and len(parts[0]) <= 6:
            numbers = []
            for part in parts[:3]:
                digits = ""
                for char in part[:6]:
                    if not "0" <= char <= "9":
                        break
                    digits += char
                numbers.append(int(digits or 0))
            while len(numbers) < 3:
                numbers.append(0)
            return (numbers[0], numbers[1], numbers[2])
    raise SlurmFormatError("version", text, "no Slurm version number found")


def squeue_json_filters(version: tuple[int, int, int]) -> frozenset[str]:
    """Which ``JobFilter`` fields ``squeue --json`` honours on Slurm ``version``."""
    if version >= (24, 5, 1):
        return frozenset({"states", "job_ids", "names", "users", "partitions"})
    if version >= (23, 2, 0):
        return frozenset({"job_ids", "users"})
    return frozenset()


def _squeue_state_arg(job_filter: JobFilter) -> str:
    """``--states=`` of squeue. squeue matches a state word against a job's whole state, flags
    included, except for a few flag words (src/squeue/filter: COMPLETING, CONFIGURING,
    RESIZING): ``RUNNING`` alone leaves out a job whose PrologSlurmctld or node boot is still
    going (RUNNING|CONFIGURING), which is exactly when the hook announces its start. Asking
    for RUNNING asks for those too (parse.py reads CONFIGURING and RESIZING as RUNNING)."""
    if any(s.strip().upper() == "ALL" for s in job_filter.states):
        return "all"
    words = [s.value for s in job_filter.wanted_states()]
    if JobState.RUNNING.value in words:
        words += ["CONFIGURING", "RESIZING"]
    return ",".join(words)


def squeue_args(job_filter: JobFilter, version: tuple[int, int, int]) -> list[str]:
    """The arguments of the one ``squeue --json`` call for ``job_filter`` on ``version``."""
    honoured = squeue_json_filters(version)
    args = ["--json"]
    if "states" in honoured and job_filter.states:
        args.append(f"--states={_squeue_state_arg(job_filter)}")
    return args + _filter_args(job_filter, honoured, squeue=True)


_FILTER_OPTIONS = (("job_ids", "--jobs"), ("names", "--name"), ("users", "--user"),
                   ("partitions", "--partition"))


def _filter_args(job_filter: JobFilter, fields: Collection[str], *,
                 squeue: bool = False) -> list[str]:
    """``--jobs=``, ``--name=``, ``--user=``, ``--partition=`` (squeue's and sacct's spelling)
    for the filter's fields among ``fields`` that are set.

    squeue looks a lone ``--jobs`` id up with slurmctld's single-job RPC, which fails ("Invalid
    job id specified", exit 1) once the job has left slurmctld; with two or more ids it loads
    the job list and filters, which leaves an unknown id out. So for squeue a lone id is
    written twice (``--jobs=7,7``): a job that is gone is then no error, as with many ids."""
    args = []
    for field, option in _FILTER_OPTIONS:
        values = [str(v) for v in getattr(job_filter, field)]
        if field in fields and values:
            if squeue and field == "job_ids" and len(values) == 1:
                values *= 2
            args.append(f"{option}=" + ",".join(values))
    return args


def listing_args(job_filter: JobFilter, fmt: str) -> list[str]:
    """The arguments of ``squeue -h -o fmt`` for ``job_filter``: the text output honours every
    filter on every version (``--json`` does not before 24.05)."""
    args = ["-h"]
    if job_filter.states:
        args.append(f"--states={_squeue_state_arg(job_filter)}")
    return [*args, *_filter_args(job_filter, [f for f, _ in _FILTER_OPTIONS], squeue=True),
            "-o", fmt]


@dataclass(frozen=True)
class SacctWindow:
    """A time window ``[start, end)`` in epoch seconds for ``sacct -S/-E``.

    Without ``-s``, sacct returns every job whose life overlaps the window (eligible before the
    end, and ended after the start or still running), so touching windows miss no short job.
    """

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"sacct window ends ({self.end}) before it starts ({self.start})")


def _sacct_time(epoch: int) -> str:
    # sacct reads local time without a zone; pass it the way it reads it.
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%dT%H:%M:%S")


def sacct_args(
    window: SacctWindow, job_filter: JobFilter = JobFilter(states=("all",))
) -> list[str]:
    """The arguments of one ``sacct --json`` call: allocations only (``-X``), every run of a
    requeued job (``-D``: from 23.02 sacct shows only a job's latest run without it, so the run
    a requeue ended would never be seen to end), all users unless some are named, an explicit
    window, and the filter."""
    args = ["--json", "-X", "-D", "-S", _sacct_time(window.start), "-E", _sacct_time(window.end)]
    args.append("--user=" + ",".join(job_filter.users) if job_filter.users else "-a")
    explicit_states = job_filter.states and not any(
        s.strip().upper() == "ALL" for s in job_filter.states
    )
    if explicit_states:
        # sacct has no COMPLETING; with -s a job matches only if it was in that state in the window.
        names = [s.value for s in job_filter.wanted_states() if s is not JobState.COMPLETING]
        args.append("--state=" + ",".join(names))
    return args + _filter_args(job_filter, ("job_ids", "names", "partitions"))

