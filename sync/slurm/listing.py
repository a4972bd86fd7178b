"""squeue's plain listing: which jobs slurmctld holds, their states and times, for a fraction of
what ``squeue --json`` costs (issue 14: 0.14 s and 27 MB for 11,000 jobs on a 2 x 512-core node,
where ``squeue --json --states=RUNNING`` took 8-12 s and 2.6 GB, listing every core per job).

    >>> text = (b"42|42|N/A|RUNNING|1796266691|NONE|main|alice|lab|1|4|n1|my job\\n"
    ...         b"43|40|3|COMPLETED|1796266600|1796266650|main|bob|lab|1|1|n1|a|b\\n")
    >>> [(j.job_id, j.state.value, j.start_time, j.end_time, j.name)
    ...  for j in parse_listing(text, cluster="c").jobs]
    [(42, 'RUNNING', 1796266691, None, 'my job'), (43, 'COMPLETED', 1796266600, 1796266650, 'a|b')]

A listed job is a ``Job`` with ``source="squeue-list"``: identity (job id, array ids, start
time), state, end time once it ended, partition, user, account, node and CPU counts, node list
and hosts, name. It has no allocation (CPU ids, GPU indices), no TRES, no exit code: the engine
fetches the full record of the jobs a connector still has to handle, and a connector that needs
a running job's cores waits for a full record (``source`` is not ``squeue``).

The listing is asked for with ``SLURM_TIME_FORMAT=%s``, so times are epoch seconds on every
version (22.05, 24.11 and 26.05 print them alike). A pending job's start is Slurm's guess (22.05
prints one a year ahead): it is dropped, as is a running job's end (its time limit). The name
comes last, so a ``|`` in it stays in it. A line that cannot be read is skipped with its reason.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from slurm_sync.errors import SlurmFormatError
from slurm_sync.slurm.gres import expand_hosts
from slurm_sync.slurm.model import Job, JobState, Producer, Skipped
from slurm_sync.slurm.parse import ParseResult, job_state

__all__ = ["LISTING_ENV", "LISTING_FORMAT", "parse_listing"]

#: squeue -o: job id, array job id, array task id (or the pending tasks), state, start, end,
#: partition, user, account, nodes, CPUs, node list, and the name last.
LISTING_FORMAT = "%A|%F|%K|%T|%S|%e|%P|%u|%a|%D|%C|%N|%j"
#: the environment the listing is asked with: epoch seconds for every time
LISTING_ENV = {"SLURM_TIME_FORMAT": "%s"}
_FIELDS = LISTING_FORMAT.count("|") + 1
_NONE = frozenset({"", "N/A", "NONE", "None", "Unknown", "(null)"})
_PRODUCER = Producer(plugin="squeue -o")


def parse_listing(data: bytes, *, cluster: str | None = None) -> ParseResult:
    """`parse_listing(stdout, cluster=)` is the jobs of one ``squeue -h -o LISTING_FORMAT``."""
    text = data.decode("utf-8", errors="replace")
    jobs: list[Job] = []
    skipped: list[Skipped] = []
    for index, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        parts = line.split("|", _FIELDS - 1)
        try:
            jobs.append(_job(parts, cluster))
        except (SlurmFormatError, ValueError) as exc:
            head = parts[0] if parts and parts[0].isdigit() else None
            skipped.append(Skipped(index=index, job_id=int(head) if head else None,
                                   reason=f"squeue listing line {index + 1}: {exc}"))
    return ParseResult(jobs=tuple(jobs), skipped=tuple(skipped), producer=_PRODUCER)


def _job(parts: Sequence[str], cluster: str | None) -> Job:
    if len(parts) != _FIELDS:
        raise SlurmFormatError("squeue listing", "|".join(parts)[:200],
                               f"expected {_FIELDS} fields separated by '|'")
    (job_id, array_job, array_task, state_word, start, end, partition, user, account,
     nodes, cpus, nodelist, name) = parts
    state = _state(state_word)
    ident = _int(job_id, "job id")
    if ident is None:
        raise SlurmFormatError("squeue listing", job_id, "no job id")
    array_id = _int(array_job, "array job id")
    task: int | None = None
    pending_tasks: str | None = None
    if array_task not in _NONE:
        if array_task.isascii() and array_task.isdigit():
            task = int(array_task)
        else:
            pending_tasks = array_task  # "1-3", "4,6-9%2": the tasks still pending
    hosts = () if nodelist in _NONE else _hosts(nodelist)
    return Job.from_fields({
        "job_id": ident,
        "name": name,
        "state": state,
        "cluster": cluster,
        "user": user or None,
        "account": account or None,
        "partition": partition or None,
        "array_job_id": array_id if (task is not None or pending_tasks) else None,
        "array_task_id": task,
        "array_tasks_pending": pending_tasks,
        "start_time": None if state is JobState.PENDING else _int(start, "start time"),
        "end_time": _int(end, "end time") if state.finished else None,
        "node_count": _int(nodes, "node count"),
        "cpus": _int(cpus, "CPU count"),
        "nodelist": "" if nodelist in _NONE else nodelist,
        "hosts": hosts,
        "source": "squeue-list",
    })


# A listing repeats a few state words and, on fat nodes, a few node lists for thousands of
# jobs: each is read once per process (at 10,000 jobs, reading them again was a third of
# the parse).
@functools.lru_cache(maxsize=64)
def _state(word: str) -> JobState:
    """The base state of squeue's ``%T`` word, read as the JSON's and scontrol's are
    (``parse.job_state``): squeue prints a flag in place of the base state (CONFIGURING while
    PrologSlurmctld runs, REQUEUED, RESIZING, SIGNALING...), which is RUNNING or PENDING."""
    state = job_state(word, "state")[0]
    if state is JobState.UNKNOWN:
        raise SlurmFormatError("state", word, "not a state this parser knows (squeue prints "
                               "one word: the base state is unknown)")
    return state


@functools.lru_cache(maxsize=4096)
def _hosts(nodelist: str) -> tuple[str, ...]:
    return tuple(expand_hosts(nodelist, "node list"))


def _int(text: str, what: str) -> int | None:
    if text in _NONE:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise SlurmFormatError("squeue listing", text, f"{what} is not a whole number")
    return int(text)

