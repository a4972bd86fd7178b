"""Read ``scontrol show job -d`` text into the same ``Job`` records ``parse_squeue`` makes.

    >>> from datetime import timezone
    >>> text = (b"JobId=7 JobName=train on 2 GPUs\\n"
    ...         b"   UserId=alice(5001) GroupId=alice(5001) MCS_label=N/A\\n"
    ...         b"   Priority=1 Nice=0 Account=lab QOS=normal\\n"
    ...         b"   JobState=RUNNING Reason=None Dependency=(null)\\n"
    ...         b"   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0\\n"
    ...         b"   RunTime=00:00:04 TimeLimit=00:30:00 TimeMin=N/A\\n"
    ...         b"   SubmitTime=2026-12-03T02:45:52 EligibleTime=2026-12-03T02:45:52\\n"
    ...         b"   StartTime=2026-12-03T02:45:53 EndTime=2026-12-03T03:15:53 Deadline=N/A\\n"
    ...         b"   Partition=gpu AllocNode:Sid=localhost:3514\\n"
    ...         b"   NodeList=n1\\n"
    ...         b"   NumNodes=1 NumCPUs=2 NumTasks=2 CPUs/Task=1 ReqB:S:C:T=0:0:*:*\\n"
    ...         b"   JOB_GRES=gpu:a100:2\\n"
    ...         b"     Nodes=n1 CPU_IDs=1-2 Mem=0 GRES=gpu:a100:2(IDX:2-3)\\n"
    ...         b"   WorkDir=/tmp\\n\\n")
    >>> result = parse_show_job(text, cluster="lab", tz=timezone.utc,
    ...                         topology={"n1": NodeTopology(sockets=2, cores_per_socket=2)})
    >>> job = result.jobs[0]
    >>> job.name, job.state.value, job.start_time, job.time_limit
    ('train on 2 GPUs', 'RUNNING', 1796265953, 30)
    >>> job.allocations[0].cpu_ids, job.allocations[0].cores, job.allocations[0].gpu_ids
    ((1, 2), ((0, 1), (1, 0)), (2, 3))

A second source of job details beside ``squeue --json`` (issue 14): on a fat-node 24.11 cluster
``scontrol show job -d`` of 11,000 jobs took 0.67 s and 29 MB where ``squeue --json -t R`` of
1,000 took 8-12 s and 2.6 GB, because squeue's JSON lists every core of every node per job and
scontrol prints ``CPU_IDs=`` ranges. Pure functions over text: no commands, no clock.

**Record layout** (src/scontrol/info_job.c, 22.05 to 26.05). Records are separated by a blank
line. The first line is ``JobId=N [ArrayJobId=A ArrayTaskId=T ArrayTaskThrottle=K |
HetJobId=H HetJobOffset=O] JobName=<rest of the line>``; every other line is indented by three
spaces and holds ``Key=Value`` tokens separated by one space. Values with spaces stand alone on
their line (``Comment``, ``WorkDir``, ``Command``, ``StdOut``, ``SubmitLine``, ...:
``_REST_OF_LINE``); ``Reason`` has its spaces made underscores by Slurm. Between ``JOB_GRES=``
and ``MinCPUsNode=`` come the allocation lines ``Nodes=<hosts> CPU_IDs=<ranges> Mem=<MB>
GRES=<gres>``, one per group of nodes with the same allocation.

**Shapes** (decided by what the text holds, never by a version number):
- ``ReqTRES=`` and ``AllocTRES=`` (23.02 and later), or one ``TRES=`` (22.05 and before) that is
  the allocated TRES once the job has nodes and the requested TRES before: the other one is
  then unknown (empty), see below.
- ``OverSubscribe=OK|NO|YES|USER|MCS|TOPO`` alone (the job's request; ``OK`` = none), or with
  ``Exclusive=NO|NODE|USER|MCS|TOPO`` (26.05: ``OverSubscribe`` is ``YES`` only when the job asked
  for it, ``Exclusive`` says what the job holds exclusively).
- Before 25.11 each record ends with a line of three spaces, and Slurm writes ``Comment``,
  ``AdminComment``, ``SystemComment`` and ``Extra`` with one trailing space (Slurm commits
  3f4b4c6033 and b1c8661751 removed both): that space is dropped where the record ends so.
- ``SLUID=``, ``SubmitLine=`` (26.05) and other keys this module does not read are ignored.

**What scontrol cannot say as squeue's JSON does** (the fields are filled as shown; the tests
list them as not compared):
- ``flags``: scontrol prints one state word, a flag taking the place of the base state
  (``COMPLETING``, ``REQUEUED``, ...), so ``flags`` holds at most that word. A word
  ``job_state`` cannot turn into a base state (``?``, or a flag newer than this module, such as
  26.05's ``EXPEDITING``) skips the record: the job's base state is then not known.
- ``reason``: where Slurm set a description (``state_desc``), scontrol prints it (spaces made
  ``_``) instead of the reason code squeue's JSON gives in ``state_reason``.
- ``tres_requested`` on the ``TRES=`` shape for a job with nodes, ``tres_allocated`` on it for one
  without: empty.
- ``source`` is ``"scontrol"``; ``cluster`` is the ``cluster`` argument (the text has none).
- Times are local times without a zone, read in ``tz`` (default: this process's local zone,
  which must then be the zone scontrol ran in). In the hour a daylight-saving change repeats,
  a time is ambiguous and read as its first occurrence.
- ``cpu_ids`` and ``cores`` need the node's layout: ``CPU_IDs`` are Slurm's CPU ids (core id x
  threads per core + thread, node-wide), turned into core ids and (socket, core) pairs with
  ``topology`` (one ``sinfo`` call, as for 22.05's squeue JSON). Without a host's topology its
  ``cpu_ids`` are None and ``cores`` empty.

**Hostile text.** Job names, comments, paths and submit lines are printed as they are, line
breaks included, so a user can make text that looks like more keys or more records. A line that
does not start with three spaces continues the free-text value before it; a record that then
repeats a key, has first-line keys elsewhere, or allocation lines outside the allocation block is
skipped, as are both records when a record's text continues after a blank line, every record of
a job id the document holds twice, and a record cut short (required keys missing, or no blank
line after the last one). Numbers are bounded as in ``parse.py``: 64 bits, CPU ids within the
node's CPUs (with a topology) or ``MAX_INDEX``, at most ``MAX_GPU_INDICES`` GPU indices and
``MAX_HOSTS`` hosts per record and ``max(1,000,000, 16 x size)`` hosts per document. Bytes that are
not UTF-8 read as U+FFFD, as in ``parse_squeue``. A bad record is a ``Skipped`` naming the job and
the field; text that is not ``scontrol show job`` output raises ``SlurmFormatError``.
"""

from __future__ import annotations

import functools
import gc
import re
import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo

from slurm_sync.errors import SlurmFormatError
from slurm_sync.slurm.gres import expand_hosts, gpu_indices
from slurm_sync.slurm.model import (
    ExitCode,
    Job,
    JobState,
    NodeAllocation,
    NodeTopology,
    Producer,
    Skipped,
)
from slurm_sync.slurm.parse import MAX_DOCUMENT_HOSTS, MAX_INDEX, ParseResult, job_state
from slurm_sync.slurm.shapes import ascii_digits, parse_tres_string, slurm_int

__all__ = ["MAX_CPU_IDS", "PRODUCER", "ControllerConfig", "parse_show_config", "parse_show_job"]

WHAT = "scontrol"
PRODUCER = "scontrol show job"
"""``ParseResult.producer.plugin`` of a parsed ``scontrol show job -d`` text."""

MAX_CPU_IDS = 1 << 16
"""Most CPU ids one node may have (nodes have hundreds; a range past it is a broken producer's)."""

# Keys Slurm prints alone on their line: the value is the rest of the line, spaces included.
_REST_OF_LINE = frozenset({
    "AdminComment", "BatchFeatures", "BurstBuffer", "BurstBufferState", "ClusterFeatures",
    "Command", "Comment", "Extra", "Power", "Prefer", "Reservation", "SELinuxContext",
    "StdErr", "StdIn", "StdOut", "SubmitLine", "SystemComment", "WorkDir",
})
# Of those, the ones Slurm before 25.11 printed with a trailing space ("Comment=%s ").
_PADDED = ("AdminComment", "SystemComment", "Comment", "Extra")
# Keys of the first line only (JobName's value is the rest of that line).
_FIRST_LINE = frozenset({
    "JobId", "ArrayJobId", "ArrayTaskId", "ArrayTaskThrottle", "HetJobId", "HetJobOffset",
    "JobName",
})
# Keys every record of 22.05 to 26.05 has; a record without one is cut short or not scontrol's.
_REQUIRED = (
    "UserId", "Account", "JobState", "Reason", "ExitCode", "Restarts", "TimeLimit", "SubmitTime",
    "EligibleTime", "StartTime", "EndTime", "Partition", "NodeList", "NumNodes", "NumCPUs",
    "WorkDir",
)
_KEY_TEXT = r"[A-Za-z][A-Za-z0-9_/:]*"
# A line of tokens: three spaces, then Key=. Tokens split at a space before the next Key=; a
# word that is no Key= belongs to the value before it ("A=1 B=x y C=2": B is "x y").
_LINE_KEY = re.compile(rf"   ({_KEY_TEXT})=")
_PAIR = re.compile(rf"(?:^   | )({_KEY_TEXT})=([^ ]*(?: (?!{_KEY_TEXT}=)[^ ]*)*)")
_NODE_LINE = re.compile(r"Nodes=(\S+) CPU_IDs=(\S*) Mem=([0-9]{1,19}) GRES=(\S*)\Z")
_USER = re.compile(r"(.*)\(([0-9]{1,10})\)\Z", re.DOTALL)
_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\Z")
_DURATION = re.compile(r"(?:([0-9]{1,9})-)?([0-9]{1,9}):([0-9]{2}):([0-9]{2})\Z")
_LEADING_NUMBER = re.compile(r"[0-9]{1,19}")
_CPU_RANGES = re.compile(r"[0-9]{1,9}(?:-[0-9]{1,9})?(?:,[0-9]{1,9}(?:-[0-9]{1,9})?)*\Z")
_NO_VALUE = frozenset({"", "(null)", "N/A", "None", "Unknown"})
_NO_TIME_LIMIT = frozenset({"UNLIMITED", "Partition_Limit", "NOT_SET", "INFINITE", "N/A"})
_NO_JOBS = "No jobs in the system"

# OverSubscribe (the job's request) and, on the 26.05 shape, Exclusive, as Job.shared.
_OVERSUBSCRIBE = {"NO": "none", "YES": "oversubscribe", "USER": "user", "MCS": "mcs",
                  "TOPO": "topo"}
_EXCLUSIVE = {"NODE": "none", "USER": "user", "MCS": "mcs", "TOPO": "topo"}


@dataclass(frozen=True)
class ControllerConfig:
    """What the reader takes from ``scontrol show config``: the cluster every record names, and
    ``MinJobAge`` in seconds (None when absent, unreadable or 0, which Slurm reads as "never
    purge": the engine then trusts no listing to hold every recent end)."""

    cluster_name: str
    min_job_age: int | None
    #: slurm.conf's PrologSlurmctld and EpilogSlurmctld ("" when not set): what ``check``
    #: reports of slurm-sync's hook
    prolog_slurmctld: str = ""
    epilog_slurmctld: str = ""


def parse_show_config(text: str | bytes) -> ControllerConfig:
    """`parse_show_config("ClusterName = lab\\nMinJobAge = 300 sec\\n")` is
    ``ControllerConfig("lab", 300)``. Lines are ``Key = value`` (22.05 to 26.05); a text
    without a ClusterName is not scontrol's: SlurmFormatError.

        >>> parse_show_config("ClusterName      = lab\\nMinJobAge        = 300 sec\\n")
        ControllerConfig(cluster_name='lab', min_job_age=300, prolog_slurmctld='', \
epilog_slurmctld='')
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        # 23.02 and later list each of several scripts: "PrologSlurmctld[0] = /path"
        key = key.strip().split("[", 1)[0]
        if sep and key in ("ClusterName", "MinJobAge", "PrologSlurmctld", "EpilogSlurmctld"):
            values.setdefault(key, value.strip())
    if not values.get("ClusterName"):
        raise SlurmFormatError("scontrol show config", "", "no ClusterName line")
    age = values.get("MinJobAge", "").split(" ")[0]
    seconds = int(age) if age.isascii() and age.isdigit() and len(age) <= 9 else 0
    unset = ("", "(null)")
    prolog, epilog = (values.get(k, "") for k in ("PrologSlurmctld", "EpilogSlurmctld"))
    return ControllerConfig(values["ClusterName"], seconds or None,
                            "" if prolog in unset else prolog, "" if epilog in unset else epilog)


@dataclass
class _Block:
    """The lines of one record; ``padded``: it ended with a line of spaces (before 25.11)."""

    lines: list[str]
    padded: bool
    ended: bool


@dataclass
class _Record:
    values: dict[str, str]
    nodes: list[str]


def parse_show_job(
    text: str | bytes,
    *,
    cluster: str | None = None,
    topology: Mapping[str, NodeTopology] | None = None,
    tz: tzinfo | None = None,
    job_ids: Collection[int] | None = None,
) -> ParseResult:
    """`parse_show_job(out)` reads ``scontrol show job -d`` (all jobs, or one) into ``Job``\\ s.

    ``cluster`` names the jobs (the text does not); ``topology`` (host -> layout, from
    ``SlurmReader.topology()``) turns ``CPU_IDs`` into core ids; ``tz`` is the zone scontrol
    printed its times in (None: this process's local zone). ``job_ids`` keeps only those jobs
    and the tasks of those array or het job ids (as squeue's ``-j``): the other records are
    passed over unread, by the ids of their first line, and so are not skipped either.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    wanted = None if job_ids is None else frozenset(job_ids)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # many small objects and no cycles (as in parse.py)
    try:
        return _parse(text, cluster, topology or {}, tz, wanted)
    finally:
        if gc_was_enabled:
            gc.enable()


def _first_line_ids(first: str) -> tuple[str, frozenset[str]] | None:
    """(JobId, every id the record answers to: JobId, ArrayJobId, HetJobId) of a record's first
    line; None when it is no record's first line."""
    if not first.startswith("JobId="):
        return None
    head = first.partition(" JobName=")[0]
    ids = [_canonical(t[t.index("=") + 1:]) for t in head.split(" ")
           if t.startswith(("JobId=", "ArrayJobId=", "HetJobId="))]
    return ids[0], frozenset(ids)


def _canonical(text: str) -> str:
    """An id as ``str(int)`` would write it (``0012`` is job 12), else as it is."""
    return str(int(text)) if ascii_digits(text, 10) else text


def _parse(
    text: str,
    cluster: str | None,
    topology: Mapping[str, NodeTopology],
    tz: tzinfo | None,
    wanted: frozenset[int] | None,
) -> ParseResult:
    producer = Producer(plugin=PRODUCER, cluster=cluster)
    stripped = text.strip()
    if not stripped or stripped == _NO_JOBS:
        return ParseResult(jobs=(), skipped=(), producer=producer)
    if not text.startswith("JobId="):
        raise SlurmFormatError(WHAT, text[:60], "not `scontrol show job` output (no JobId= first)")
    host_budget = max(MAX_DOCUMENT_HOSTS, 16 * len(text))
    hosts = 0
    parsed: list[Job | Skipped] = []
    no_topology: set[str] = set()
    blocks = _blocks(text)
    heads = [_first_line_ids(b.lines[0]) for b in blocks]
    wanted_text = None if wanted is None else {str(i) for i in wanted}
    read_before = False  # whether the record before this block was read
    for index, (block, head) in enumerate(zip(blocks, heads)):
        where = f"{WHAT}.jobs[{index}]"
        if head is None:
            # The text of the record before goes on after a blank line: neither can be trusted.
            if read_before and parsed and isinstance(parsed[-1], Job):
                before = parsed[-1].job_id
                parsed[-1] = Skipped(index - 1, before, (
                    f"{WHAT}.jobs[{index - 1}] (JobId={before}): the record's text goes on "
                    "after a blank line (a value with line breaks?)"))
            if read_before:
                parsed.append(Skipped(index, None, (
                    f"{where}: text after a blank line that is no record (no JobId= first): "
                    "the rest of the record before it?")))
            continue
        read_before = wanted_text is None or not wanted_text.isdisjoint(head[1])
        if not read_before:
            continue
        item = _parse_block(block, index, cluster, topology, tz, no_topology)
        if isinstance(item, Job):
            hosts += len(item.hosts) + len(item.allocations)
            if hosts > host_budget:
                hosts -= len(item.hosts) + len(item.allocations)
                item = Skipped(index, item.job_id, (
                    f"{where} (JobId={item.job_id}): the document names more than "
                    f"{host_budget} hosts, too many for its size"))
        parsed.append(item)
    # every record's id counts, read or not: a copy of a wanted job may be among the others
    # (a read job's id is its first line's JobId, written as counted here)
    counts = Counter(h[0] for h in heads if h is not None)
    twice = {p.job_id for p in parsed
             if isinstance(p, Job) and counts[str(p.job_id)] > 1}
    if twice:
        parsed = [Skipped(i, p.job_id, (
            f"{WHAT}.jobs[{i}] (JobId={p.job_id}): the job id is in the document more than "
            "once (a value with line breaks may imitate a record)"))
            if isinstance(p, Job) and p.job_id in twice else p for i, p in enumerate(parsed)]
    warnings: tuple[str, ...] = ()
    if no_topology:
        shown = ", ".join(sorted(no_topology)[:5]) + (", ..." if len(no_topology) > 5 else "")
        warnings = (f"no topology for {len(no_topology)} host(s) ({shown}): their cpu_ids are "
                    "unknown",)
    return ParseResult(
        jobs=tuple(p for p in parsed if isinstance(p, Job)),
        skipped=tuple(p for p in parsed if isinstance(p, Skipped)),
        producer=producer,
        warnings=warnings,
    )


def _blocks(text: str) -> list[_Block]:
    """Split on blank lines. A blank line counts only when a line break ends it: the text after
    the last line break is part of the last record, which is then cut short."""
    lines = text.split("\n")
    tail = lines.pop()
    blocks: list[_Block] = []
    current: list[str] = []
    for line in lines:
        if line and not line.isspace():
            current.append(line)
        elif current:
            blocks.append(_Block(current, padded=line != "", ended=True))
            current = []
    if tail:
        current.append(tail)
    if current:
        blocks.append(_Block(current, padded=False, ended=False))
    return blocks


def _parse_block(
    block: _Block,
    index: int,
    cluster: str | None,
    topology: Mapping[str, NodeTopology],
    tz: tzinfo | None,
    no_topology: set[str],
) -> Job | Skipped:
    where = f"{WHAT}.jobs[{index}]"
    raw_id = block.lines[0][6:].split(" ", 1)[0]
    job_id: int | str | None = int(raw_id) if ascii_digits(raw_id, 10) else raw_id[:80] or None
    named = f"{where} (JobId={job_id})"
    try:
        if not block.ended:
            raise SlurmFormatError("", None, "the record is cut short (no blank line after it)")
        record = _read(block)
        return _job(record, cluster, topology, tz, no_topology)
    except SlurmFormatError as exc:
        field = f"{named}.{exc.field}" if exc.field else named
        reason = str(SlurmFormatError(field, exc.value, exc.reason))
    except (KeyError, TypeError, ValueError, ArithmeticError, IndexError) as exc:
        reason = f"{named}: {type(exc).__name__}: {str(exc)[:200]}"
    return Skipped(index=index, job_id=job_id, reason=reason)


def _read(block: _Block) -> _Record:
    """The record's ``Key=Value`` pairs and its allocation lines, checked for the structure
    Slurm prints (see the module docstring, "Hostile text")."""
    first, *rest = block.lines
    head, has_name, name = first.partition(" JobName=")
    if not has_name:
        raise SlurmFormatError("JobName", first[:80], "the first line has no JobName=")
    values: dict[str, str] = {}
    for token in head.split(" "):
        key, eq, value = token.partition("=")
        if not eq or key not in _FIRST_LINE or key in values:
            raise SlurmFormatError(key or "JobId", token, "not a key of the first line")
        values[key] = value
    values["JobName"] = name
    free: str | None = "JobName"  # the free-text value a line break may continue
    nodes: list[str] = []
    in_allocation = False
    for number, line in enumerate(rest, 2):
        start = _LINE_KEY.match(line)
        if start is None:
            if line.startswith("     Nodes="):
                if not in_allocation:
                    raise SlurmFormatError("Nodes", line.strip(), "an allocation line not "
                                           "after JOB_GRES= (a value with line breaks?)")
                nodes.append(line[5:])
                free = None
                continue
            if free is None:
                raise SlurmFormatError(f"line {number}", line[:80], "not Key=Value tokens")
            values[free] += "\n" + line
            continue
        key = start.group(1)
        if key in _REST_OF_LINE:
            pairs = [(key, line[start.end():])]
            free = key
        else:
            pairs = _PAIR.findall(line)
            free = None
        on_line = dict(pairs)
        if len(on_line) < len(pairs) or not values.keys().isdisjoint(on_line) or (
                not _FIRST_LINE.isdisjoint(on_line)):
            twice = next(k for k, _ in pairs if k in values or k in _FIRST_LINE
                         or [p for p, _ in pairs].count(k) > 1)
            raise SlurmFormatError(twice, on_line[twice], "the key is in the record twice (a "
                                   "value with line breaks?)")
        values.update(on_line)
        in_allocation = key == "JOB_GRES"
    if block.padded:
        for key in _PADDED:
            if values.get(key, "").endswith(" "):
                values[key] = values[key][:-1]
    return _Record(values, nodes)


# --- values -------------------------------------------------------------------------------------


def _job(
    record: _Record,
    cluster: str | None,
    topology: Mapping[str, NodeTopology],
    tz: tzinfo | None,
    no_topology: set[str],
) -> Job:
    values = record.values
    for key in _REQUIRED:
        if key not in values:
            raise SlurmFormatError(key, None, "missing: the record is cut short or not scontrol's")
    job_id = slurm_int(values["JobId"], "JobId")
    if job_id is None or job_id <= 0:
        raise SlurmFormatError("JobId", values["JobId"], "no job id")
    state, flags = job_state(values["JobState"], "JobState")
    if state is JobState.UNKNOWN:
        raise SlurmFormatError("JobState", values["JobState"], "not a state this parser knows "
                               "(scontrol prints one word: the base state is unknown)")
    user, uid = _user(values["UserId"])
    array_job_id = _optional_id(values.get("ArrayJobId"), "ArrayJobId")
    array_task_id, array_pending = _array_task(values.get("ArrayTaskId"), array_job_id)
    het_job_id = _optional_id(values.get("HetJobId"), "HetJobId")
    ended = state.finished or state is JobState.COMPLETING
    nodelist = "" if state is JobState.PENDING else _value(values["NodeList"])
    hosts = expand_hosts(nodelist, "NodeList")
    allocations, gres = _allocations(record.nodes, hosts, topology, no_topology)
    requested, allocated = _tres(values, bool(hosts))
    code = _exit_code(values["ExitCode"])  # read always: a broken one is a broken record
    return Job.from_fields({
        "job_id": job_id,
        "name": values["JobName"],
        "state": state,
        "flags": flags,
        "reason": "" if values["Reason"] == "None" else values["Reason"],
        "cluster": cluster,
        "user": user,
        "uid": uid,
        "account": _value(values["Account"]) or None,
        "partition": _value(values["Partition"]) or None,
        "qos": _value(values.get("QOS", "")) or None,
        "array_job_id": array_job_id,
        "array_task_id": array_task_id,
        "array_tasks_pending": array_pending,
        "het_job_id": het_job_id,
        "het_job_offset": (
            slurm_int(values.get("HetJobOffset"), "HetJobOffset") if het_job_id else None
        ),
        "submit_time": _time(values["SubmitTime"], "SubmitTime", tz),
        "eligible_time": _time(values["EligibleTime"], "EligibleTime", tz),
        # A pending job's start and a running job's end are Slurm's estimates, not facts.
        "start_time": (
            None if state is JobState.PENDING else _time(values["StartTime"], "StartTime", tz)
        ),
        "end_time": _time(values["EndTime"], "EndTime", tz) if ended else None,
        "time_limit": _time_limit(values["TimeLimit"]),
        "node_count": _leading_number(values["NumNodes"], "NumNodes"),
        "cpus": _leading_number(values["NumCPUs"], "NumCPUs"),
        "nodelist": nodelist,
        "hosts": hosts,
        "allocations": allocations,
        "gres_detail": gres,
        "tres_requested": requested,
        "tres_allocated": allocated,
        "shared": _shared(values.get("OverSubscribe"), values.get("Exclusive")),
        "comment": values.get("Comment", ""),
        "admin_comment": values.get("AdminComment", ""),
        "system_comment": values.get("SystemComment", ""),
        "exit_code": code if ended else ExitCode(),
        "work_dir": _value(values["WorkDir"]) or None,
        "restart_count": slurm_int(values["Restarts"], "Restarts", bits=16) or 0,
        "source": "scontrol",
    })


def _value(text: str) -> str:
    """Slurm's "nothing" words (``(null)``, ``N/A``, ``None``, ``Unknown``) as ""."""
    return "" if text in _NO_VALUE else text


def _optional_id(text: str | None, field: str) -> int | None:
    """Array and het ids: absent, 0 and NO_VAL all mean "not part of one"."""
    return (slurm_int(text, field) or None) if text is not None else None


def _user(text: str) -> tuple[str | None, int | None]:
    """``alice(5001)`` -> ("alice", 5001)."""
    match = _USER.match(text)
    if not match:
        raise SlurmFormatError("UserId", text, "expected NAME(UID)")
    return (match.group(1) or None), int(match.group(2))


def _array_task(text: str | None, array_job_id: int | None) -> tuple[int | None, str | None]:
    """(task id, pending tasks): a number is one task (NO_VAL: none); anything else is the
    pending tasks of the array's meta record (``2-3%2``)."""
    if array_job_id is None or text is None:
        return None, None
    if ascii_digits(text, 10):
        return slurm_int(int(text), "ArrayTaskId"), None
    if not text or len(text) > 4096 or not set(text) <= set("0123456789-,%:"):
        raise SlurmFormatError("ArrayTaskId", text, "not a task id or task list")
    return None, text


def _leading_number(text: str, field: str) -> int | None:
    """``2``, ``1-1`` (min-max) or ``N/A`` -> 2, 1, None."""
    match = _LEADING_NUMBER.match(text)
    if match:
        return slurm_int(match.group(), field)
    if text in _NO_VALUE:
        return None
    raise SlurmFormatError(field, text, "expected a number")


def _time_limit(text: str) -> int | None:
    """``UNLIMITED``, ``Partition_Limit`` -> None; ``[D-]HH:MM:SS`` -> minutes."""
    if text in _NO_TIME_LIMIT:
        return None
    match = _DURATION.match(text)
    if not match:
        raise SlurmFormatError("TimeLimit", text, "expected [D-]HH:MM:SS or UNLIMITED")
    days, hours, minutes, _seconds = (int(g) if g else 0 for g in match.groups())
    return (days * 24 + hours) * 60 + minutes


def _time(text: str, field: str, tz: tzinfo | None) -> int | None:
    """A local ``YYYY-MM-DDTHH:MM:SS`` as epoch seconds; ``Unknown``/``None``/``N/A`` -> None."""
    if text in _NO_VALUE:
        return None
    try:
        return _epoch(text, tz)
    except SlurmFormatError as exc:
        raise SlurmFormatError(field, text, exc.reason) from None


@functools.lru_cache(maxsize=8192)
def _epoch(text: str, tz: tzinfo | None) -> int | None:
    match = _TIME.match(text)
    if not match:
        raise SlurmFormatError("", text, "not a time as scontrol prints it (YYYY-MM-DDTHH:MM:SS;"
                               " is SLURM_TIME_FORMAT set where scontrol ran?)")
    try:
        year, month, day, hour, minute, second = (int(g) for g in match.groups())
        moment = datetime(year, month, day, hour, minute, second)
        if tz is None:
            epoch = int(time.mktime((*moment.timetuple()[:8], -1)))
        else:
            epoch = int(moment.replace(tzinfo=tz).timestamp())
    except (ValueError, OverflowError) as exc:
        raise SlurmFormatError("", text, f"not a time ({exc})") from None
    return epoch if epoch > 0 else None


def _exit_code(text: str) -> ExitCode:
    """``rc:signal``: a signal means the return code is not known (as squeue's wait status)."""
    code, colon, signal = text.partition(":")
    if not colon or not ascii_digits(code, 3) or not ascii_digits(signal, 3):
        raise SlurmFormatError("ExitCode", text, "expected RC:SIGNAL")
    if int(signal):
        return ExitCode(return_code=None, signal=int(signal))
    return ExitCode(return_code=int(code), signal=None)


def _shared(oversubscribe: str | None, exclusive: str | None) -> str | None:
    """``Job.shared`` from ``OverSubscribe`` (and ``Exclusive`` on the 26.05 shape)."""
    if exclusive is None:
        return _OVERSUBSCRIBE.get(oversubscribe or "")
    if oversubscribe == "YES":
        return "oversubscribe"
    return _EXCLUSIVE.get(exclusive)


def _tres(values: Mapping[str, str], has_nodes: bool) -> tuple[Mapping[str, int], ...]:
    """(requested, allocated). 22.05's single ``TRES=`` is the allocated TRES once the job has
    nodes, the requested TRES before; the other is then unknown (empty)."""
    if "ReqTRES" in values or "AllocTRES" in values:
        return (parse_tres_string(_value(values.get("ReqTRES", "")), "ReqTRES"),
                parse_tres_string(_value(values.get("AllocTRES", "")), "AllocTRES"))
    single = parse_tres_string(_value(values.get("TRES", "")), "TRES")
    empty = parse_tres_string("", "TRES")
    return (empty, single) if has_nodes else (single, empty)


def _allocations(
    lines: list[str],
    hosts: tuple[str, ...],
    topology: Mapping[str, NodeTopology],
    no_topology: set[str],
) -> tuple[tuple[NodeAllocation, ...], tuple[str, ...]]:
    """One ``NodeAllocation`` per host of the ``Nodes=`` lines (each line a group of hosts with
    the same CPU ids, memory and GRES), and the per-host GRES strings (``gres_detail``)."""
    if not lines:
        return tuple(NodeAllocation(hostname=h) for h in hosts), ()
    allocations: list[NodeAllocation] = []
    gres: list[str] = []
    for line in lines:
        match = _NODE_LINE.match(line)
        if not match:
            raise SlurmFormatError("Nodes", line[:80], "expected Nodes=... CPU_IDs=... Mem=... "
                                   "GRES=...")
        group, cpu_text, memory_text, gres_text = match.groups()
        if cpu_text and not _CPU_RANGES.match(cpu_text):
            raise SlurmFormatError("CPU_IDs", cpu_text, "not a list of CPU ids and ranges")
        memory = slurm_int(memory_text, "Mem", bits=64)
        gpus = gpu_indices(gres_text, "GRES") if gres_text else ()
        for host in expand_hosts(group, "Nodes"):
            layout = topology.get(host)
            cpu_ids: tuple[int, ...] | None = None
            cores: tuple[tuple[int, int], ...] = ()
            if layout is not None and min(layout.sockets, layout.cores_per_socket,
                                          layout.threads_per_core) > 0:
                cpu_ids, cores = _core_ids(cpu_text, layout)
            else:
                _check_cpu_ids(cpu_text)
                no_topology.add(host)
            allocations.append(NodeAllocation(host, cores, cpu_ids, gpus, memory))
            gres.append(gres_text)
        if len(allocations) > len(hosts) + 100_000:
            raise SlurmFormatError("Nodes", group, "more allocation hosts than the job has")
    return tuple(allocations), (tuple(gres) if any(gres) else ())


def _check_cpu_ids(text: str) -> None:
    """Without a topology the ids are not expanded, only bounded (``parse.MAX_INDEX``)."""
    for number in re.split("[-,]", text) if text else ():
        if int(number) > MAX_INDEX:
            raise SlurmFormatError("CPU_IDs", text, f"a CPU id beyond {MAX_INDEX}")


def _core_ids(
    text: str, layout: NodeTopology
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    try:
        return _core_ids_cached(text, layout)
    except SlurmFormatError as exc:
        raise SlurmFormatError("CPU_IDs", text, exc.reason) from None


@functools.lru_cache(maxsize=4096)
def _core_ids_cached(
    text: str, layout: NodeTopology
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Slurm's CPU ids (core x threads + thread, node-wide) as core ids and (socket, core)."""
    threads, per_socket = layout.threads_per_core, layout.cores_per_socket
    cpus = min(layout.sockets * per_socket * threads, MAX_CPU_IDS)
    found: set[int] = set()
    for part in text.split(",") if text else ():
        low, dash, high = part.partition("-")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise SlurmFormatError("", text, f"CPU range {part!r} runs backwards")
        if last >= cpus:
            raise SlurmFormatError("", text, f"CPU id {last} is beyond the node's {cpus} CPUs "
                                   "(its topology)")
        found.update(range(first // threads, last // threads + 1))
    ids = tuple(sorted(found))
    return ids, tuple((i // per_socket, i % per_socket) for i in ids)
