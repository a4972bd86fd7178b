"""Stand-in ``squeue``, ``sacct``, ``scontrol``, ``sinfo``, ``sbatch`` and ``scancel`` that answer
from a timeline and from what was submitted meanwhile, in Slurm 24.11's JSON (data_parser
v0.0.42).

    bin_dir = install(work, timeline)         # work/bin/{squeue,sacct,...}, work/timeline.json
    arm(work, "squeue", "fail")               # the next `squeue --json` exits 1
    arm(work, "sbatch", "kill:0.01")          # the next sbatch's caller is killed after its answer
    calls(work)                               # every call: time, argv, caller pid, fault, exit code

Records are copies of records captured from the lab (tests/fixtures/slurm/24.11/, picked by
bench/gen.py's ``_templates``), so every key, nesting and value kind is Slurm's own; ids, users,
hosts, cores, GPUs, states and times come from the timeline (``timeline.py``) at the moment of
the call (``time.time()``). 24.11 honours squeue's filters with ``--json`` (``--states``,
``--jobs``, ``--name``, ``--user``, ``--partition``), and so do these; sacct honours ``-S``/``-E``
(a record is in the window when it was eligible before the end and ended after the start or has
not ended), ``-D``, ``-j``, ``-u``/``-a``, ``--name``, ``--partition`` and ``--state``.

Faults are armed by the harness in ``work/faults.json`` and taken, one per call, by the next
``--json`` call of that command: ``fail`` (exit 1 with slurm_load_jobs' error, nothing on
stdout), ``empty`` (a valid document with no jobs: a Slurm that lies), ``slow:N`` (the answer as
it was at the call, printed N seconds later).

``sbatch`` and ``scancel`` act on ``work/submitted.json`` (see submits.py: jobs submitted while
the simulation runs, which squeue and sacct show beside the timeline's, with their comment).
sbatch prints the job id as ``--parsable`` does and takes its own faults: ``fail`` (exit 1,
"Batch job submission failed", nothing submitted), ``lost`` (submitted, yet exit 1 with "Socket
timed out": the answer lost), ``hang:N`` (submitted, the answer N seconds later: the caller's
timeout kills it first) and ``kill:D`` (submitted and answered, then the caller is SIGKILLed D
seconds later: between sbatch and the caller's commit). scancel's ``fail`` exits 1 having
cancelled nothing.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import pwd
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.chaos import submits
from tests.chaos.timeline import (
    CORES_PER_SOCKET,
    CPU_HOSTS,
    GPU_HOSTS,
    SOCKETS,
    Job,
    SlurmState,
    Timeline,
    sacct_records,
    squeue_state,
)

__all__ = ["arm", "calls", "disarm", "install", "main", "sacct_document", "squeue_document"]

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "slurm" / "24.11"
RELEASE = "24.11.5"
MEMORY_PER_CPU = 2000
SIGNAL_NAMES = {9: "KILL", 15: "TERM"}
COMMANDS = ("squeue", "sacct", "scontrol", "sinfo", "sbatch", "scancel")
_STATE_SHORT = {
    "PD": "PENDING", "R": "RUNNING", "S": "SUSPENDED", "CG": "COMPLETING", "CD": "COMPLETED",
    "CA": "CANCELLED", "F": "FAILED", "TO": "TIMEOUT", "NF": "NODE_FAIL", "PR": "PREEMPTED",
    "BF": "BOOT_FAIL", "DL": "DEADLINE", "OOM": "OUT_OF_MEMORY", "RQ": "REQUEUED",
}
ACTIVE = ("PENDING", "RUNNING", "SUSPENDED", "COMPLETING")


# --- templates ---------------------------------------------------------------------------------


def _gen() -> Any:
    """bench/gen.py as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("slurm_sync_bench_gen", ROOT / "bench" / "gen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_templates() -> dict[str, Any]:
    """The captured records the stand-ins copy: squeue's head, a running and a pending record
    (bench/gen.py picks them), and sacct's head and a finished GPU job's record."""
    head, running, pending = _gen()._templates("24.11")
    sacct = json.loads((FIXTURE / "sacct.json").read_text(encoding="utf-8"))
    record = next(r for r in sacct["jobs"] if r["state"]["current"] == ["COMPLETED"]
                  and "gres" in r.get("submit_line", ""))
    return {
        "squeue_head": head, "squeue_running": running, "squeue_pending": pending,
        "sacct_head": {k: v for k, v in sacct.items() if k != "jobs"}, "sacct_job": record,
    }


def _number(value: int, *, set_: bool = True) -> dict[str, Any]:
    return {"set": set_, "infinite": False, "number": value}


def _nodelist(hosts: Sequence[str]) -> str:
    """Slurm's compressed host list: ``n[001-003,017]``."""
    if not hosts:
        return ""
    groups: dict[tuple[str, int], list[int]] = {}
    for host in hosts:
        prefix = host.rstrip("0123456789")
        digits = host[len(prefix):]
        groups.setdefault((prefix, len(digits)), []).append(int(digits))
    parts = []
    for (prefix, width), numbers in groups.items():
        numbers = sorted(set(numbers))
        if len(numbers) == 1:
            parts.append(f"{prefix}{numbers[0]:0{width}d}")
            continue
        ranges: list[str] = []
        first = prev = numbers[0]
        for n in [*numbers[1:], None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            ranges.append(f"{first:0{width}d}" if first == prev
                          else f"{first:0{width}d}-{prev:0{width}d}")
            if n is not None:
                first = prev = n
        parts.append(f"{prefix}[{','.join(ranges)}]")
    return ",".join(parts)


def _exit(code: int, signal: int) -> dict[str, Any]:
    status = ["SIGNALED"] if signal else (["ERROR"] if code else ["SUCCESS"])
    return {"status": status, "return_code": _number(code),
            "signal": {"id": _number(signal, set_=bool(signal)),
                       "name": SIGNAL_NAMES.get(signal, "")}}


def _uid(name: str) -> int:
    """The user's uid on this machine when there is one (the Bank connector looks ended jobs'
    users up by name), else a made-up one."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return 10000 + zlib.crc32(name.encode()) % 50000


# --- squeue ------------------------------------------------------------------------------------


def _squeue_record(templates: dict[str, Any], job: Job, st: SlurmState, cluster: str,
                   now: float) -> dict[str, Any]:
    run = job.runs[st.run] if st.run is not None else None
    record = json.loads(templates["squeue_running_text" if run else "squeue_pending_text"])
    total = job.cpus_per_node * job.nodes
    record["job_id"] = job.job_id
    record["array_job_id"] = _number(job.array_job_id)
    record["array_task_id"] = _number(job.array_task_id or 0,
                                      set_=job.array_task_id is not None)
    record["array_task_string"] = ""
    record["name"] = job.name
    record["user_name"] = job.user
    record["user_id"] = _uid(job.user)
    record["group_name"] = job.user
    record["group_id"] = _uid(job.user)
    record["account"] = job.account
    record["partition"] = job.partition
    record["cluster"] = cluster
    record["qos"] = "normal"
    record["requeue"] = True
    record["restart_cnt"] = st.restart
    record["time_limit"] = _number(job.time_limit)
    record["submit_time"] = _number(st.submission)
    record["eligible_time"] = _number(st.eligible)
    record["accrue_time"] = _number(st.eligible)
    record["cpus"] = _number(total)
    record["node_count"] = _number(job.nodes)
    record["tasks"] = _number(total)
    record["state_reason"] = st.reason
    gres = f"gres/gpu={job.gpus_per_node * job.nodes}" if job.gpus_per_node else ""
    record["tres_req_str"] = ",".join(filter(None, [
        f"cpu={total}", f"mem={total * MEMORY_PER_CPU}M", f"node={job.nodes}",
        f"billing={total}", gres]))
    record["tres_per_node"] = f"gres/gpu:a100:{job.gpus_per_node}" if job.gpus_per_node else ""
    if st.state in ("RUNNING", "COMPLETING") or run is None:
        record["exit_code"] = record["derived_exit_code"] = _exit(0, 0)
    else:
        record["exit_code"] = record["derived_exit_code"] = _exit(run.exit_code, run.signal)
    if st.state == "COMPLETING":
        assert run is not None
        record["job_state"] = [run.state, "COMPLETING"]
    else:
        record["job_state"] = [st.state]
    if run is None:
        # pending (Slurm shows an estimated start), or cancelled while pending (start = end)
        estimate = int(now) + 30
        record["start_time"] = _number(st.start if st.state != "PENDING" else estimate)
        record["end_time"] = _number(st.end if st.state != "PENDING"
                                     else estimate + job.time_limit * 60)
        record["nodes"] = ""
        record["batch_host"] = ""
        record["job_resources"] = None
        record["gres_detail"] = []
        record["tres_alloc_str"] = ""
        if st.state != "PENDING":
            record["exit_code"] = record["derived_exit_code"] = _exit(0, 15)
        return record
    record["start_time"] = _number(st.start)
    record["end_time"] = _number(st.end)
    nodelist = _nodelist(run.hosts)
    record["nodes"] = nodelist
    record["batch_host"] = run.hosts[0]
    record["tres_alloc_str"] = ",".join(filter(None, [
        f"cpu={total}", f"mem={total * MEMORY_PER_CPU}M", f"node={job.nodes}",
        f"billing={total}", gres]))
    record["gres_detail"] = (
        [f"gpu:a100:{len(g)}(IDX:{g[0]}-{g[-1]})" if len(g) > 1 else f"gpu:a100:1(IDX:{g[0]})"
         for g in run.gpus] if job.gpus_per_node and st.gpus else [])
    allocation = []
    for index, (host, cores) in enumerate(zip(run.hosts, run.cores)):
        allocation.append({
            "index": index, "name": host,
            "cpus": {"count": len(cores), "used": 0},
            "memory": {"used": 0, "allocated": len(cores) * MEMORY_PER_CPU},
            "sockets": [
                {"index": s, "cores": [
                    {"index": c, "status": ["ALLOCATED" if s * CORES_PER_SOCKET + c in cores
                                            else "UNALLOCATED"]}
                    for c in range(CORES_PER_SOCKET)]}
                for s in range(SOCKETS)],
        })
    resources = record.get("job_resources") or {}
    resources["nodes"] = {"count": job.nodes, "select_type": ["ONE_ROW"], "list": nodelist,
                          "whole": False, "allocation": allocation}
    resources["cpus"] = total
    record["job_resources"] = resources
    return record


def _pending_array(templates: dict[str, Any], tasks: list[Job], cluster: str,
                   now: float) -> dict[str, Any]:
    """Slurm shows an array's tasks that have not started as one record under the array's id."""
    first = tasks[0]
    st = SlurmState("PENDING", None, 0, 0, 0, "Resources", eligible=first.submit,
                    submission=first.submit)
    record = _squeue_record(templates, first, st, cluster, now)
    ids = sorted(t.array_task_id or 0 for t in tasks)
    record["job_id"] = first.array_job_id
    record["array_task_id"] = _number(0, set_=False)
    record["array_task_string"] = (f"{ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1))
                                   else ",".join(map(str, ids)))
    return record


def _split(values: Iterable[str]) -> list[str]:
    return [v for value in values for v in value.split(",") if v]


def _states(words: Iterable[str]) -> set[str] | None:
    wanted: set[str] = set()
    for word in words:
        upper = word.strip().upper()
        if upper == "ALL":
            return None
        wanted.add(_STATE_SHORT.get(upper, upper))
    return wanted


def _selected(st: SlurmState, states: set[str] | None) -> bool:
    """sacct's ``-s``, for a record whose life overlaps the window: a state it was in during
    the window. RUNNING selects every run that ran in it, whatever its state now (as real sacct
    does on 22.05, 24.11 and 26.05); another state selects a record that is in it."""
    if states is None or st.state in states:
        return True
    return "RUNNING" in states and st.run is not None and st.start > 0


def _options(argv: Sequence[str], names: dict[str, str]) -> tuple[dict[str, list[str]], list[str]]:
    """``--name=value``, ``--name value`` and ``-x value``: {canonical: [values]}, flags."""
    found: dict[str, list[str]] = {}
    flags: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key in names:
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            found.setdefault(names[key], []).append(value)
        else:
            flags.append(arg)
        i += 1
    return found, flags


def squeue_document(timeline: Timeline, templates: dict[str, Any], now: float,
                    argv: Sequence[str], submitted: Sequence[dict[str, Any]] = ()
                    ) -> dict[str, Any]:
    """``squeue --json [filters]`` at ``now``; ``submitted``: what sbatch added (submits.py)."""
    opts, _ = _options(argv, {"--states": "states", "-t": "states", "--jobs": "jobs",
                              "-j": "jobs", "--name": "name", "-n": "name", "--user": "user",
                              "-u": "user", "--partition": "partition", "-p": "partition"})
    states = _states(_split(opts["states"])) if "states" in opts else set(ACTIVE)
    ids = {int(i.split("_")[0]) for i in _split(opts.get("jobs", []))}
    names = set(_split(opts.get("name", [])))
    users = set(_split(opts.get("user", [])))
    partitions = set(_split(opts.get("partition", [])))
    records: list[dict[str, Any]] = []
    pending_arrays: dict[int, list[Job]] = {}
    for job in timeline.jobs:
        st = squeue_state(job, now, timeline.min_job_age)
        if st is None:
            continue
        if states is not None and st.state not in states:
            continue
        if ids and job.job_id not in ids and job.array_job_id not in ids:
            continue
        if (names and job.name not in names) or (users and job.user not in users) or (
                partitions and job.partition not in partitions):
            continue
        if job.array_job_id and st.state == "PENDING":
            pending_arrays.setdefault(job.array_job_id, []).append(job)
            continue
        records.append(_squeue_record(templates, job, st, timeline.cluster, now))
    for tasks in pending_arrays.values():
        records.append(_pending_array(templates, tasks, timeline.cluster, now))
    for entry, tasks, st in submits.shown(submitted, now, timeline.min_job_age):
        jobs = [submits.as_job(entry, t) for t in tasks]
        if states is not None and st.state not in states:
            continue
        if ids and not ids & {jobs[0].job_id, jobs[0].array_job_id}:
            continue
        if (names and entry["name"] not in names) or (users and entry["user"] not in users) or (
                partitions and entry["partition"] not in partitions):
            continue
        if entry["array_size"] and st.state == "PENDING":
            record = _pending_array(templates, jobs, timeline.cluster, now)
            record["array_task_string"] = submits.task_string(tasks)
        else:
            record = _squeue_record(templates, jobs[0], st, timeline.cluster, now)
        record["comment"] = entry["comment"]
        records.append(record)
    head = json.loads(json.dumps(templates["squeue_head"]))
    head["meta"]["command"] = ["squeue", *argv]
    head["meta"]["slurm"]["cluster"] = timeline.cluster
    head["last_update"] = head["last_backfill"] = _number(int(now))
    return {**head, "jobs": records}


def squeue_listing(document: dict[str, Any], fmt: str) -> str:
    """``squeue -h -o FMT`` with ``SLURM_TIME_FORMAT=%s``, from the records ``squeue --json``
    would print for the same filters, as real squeue lists them: ``%A`` a task's own id,
    ``%F``/``%K`` the array's id and task (the pending tasks for a pending array; N/A and the
    job's own id when no array), times as epoch seconds or N/A (a pending job's start is
    Slurm's estimate, a running job's end its time limit: printed as Slurm does)."""
    fields = fmt.split("|")
    lines = []
    for record in document["jobs"]:
        number = {k: record[k]["number"] if record[k].get("set") else None
                  for k in ("array_job_id", "array_task_id", "start_time", "end_time",
                            "node_count", "cpus")}
        array = number["array_job_id"] or None
        state = record["job_state"][0]
        task = (record["array_task_string"] if array and record.get("array_task_string")
                else str(number["array_task_id"]) if array else "N/A")
        values = {
            "%A": str(record["job_id"]), "%F": str(array or record["job_id"]), "%K": task,
            "%T": state, "%S": str(number["start_time"] or "N/A"),
            "%e": str(number["end_time"] or "N/A"), "%P": record["partition"],
            "%u": record["user_name"], "%a": record["account"],
            "%D": str(number["node_count"] or 1), "%C": str(number["cpus"] or 1),
            "%N": record["nodes"], "%j": record["name"],
        }
        lines.append("|".join(values.get(f, f) for f in fields) + "\n")
    return "".join(lines)


def _ranges(numbers: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` as Slurm prints id lists: ``1-3,7``."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and "-" in out[-1] and int(out[-1].split("-")[1]) == n - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        elif out and "-" not in out[-1] and int(out[-1]) == n - 1:
            out[-1] = f"{out[-1]}-{n}"
        else:
            out.append(str(n))
    return ",".join(out)


def _clock(epoch: int | None) -> str:
    return "Unknown" if not epoch else datetime.fromtimestamp(epoch).strftime("%Y-%m-%dT%H:%M:%S")


def scontrol_show_job(document: dict[str, Any]) -> str:
    """``scontrol show job -d`` for the records ``squeue --json`` prints (one sim node has one
    thread per core, so a CPU id is its core's: socket x cores per socket + core)."""
    blocks = []
    # The sim numbers an array's first task with the array's own id, which real Slurm never
    # does (a task that starts gets an id of its own): the pending remainder's record would
    # repeat that id, so it is left out here. Full records are asked for started runs only.
    started = {r["job_id"] for r in document["jobs"] if r["job_state"][0] != "PENDING"}
    for record in document["jobs"]:
        if record["job_state"][0] == "PENDING" and record["job_id"] in started:
            continue

        def number(key: str, record: dict[str, Any] = record) -> int | None:
            value = record[key]
            return value["number"] if value.get("set") else None

        array = number("array_job_id") or None
        head = f"JobId={record['job_id']}"
        if array:
            task = record.get("array_task_string") or str(number("array_task_id"))
            head += f" ArrayJobId={array} ArrayTaskId={task} ArrayTaskThrottle=0"
        user = f"{record['user_name']}({record['user_id']})"
        code = record["exit_code"]
        rc = code["return_code"]["number"] if code["return_code"].get("set") else 0
        sig = code["signal"]["id"]["number"] if code["signal"]["id"].get("set") else 0
        limit = number("time_limit") or 0
        days, rest = divmod(limit * 60, 86400)
        clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
        state = record["job_state"][-1] if len(record["job_state"]) > 1 else record[
            "job_state"][0]
        lines = [
            f"{head} JobName={record['name']}",
            f"   UserId={user} GroupId={user} MCS_label=N/A",
            f"   Priority=1 Nice=0 Account={record['account']} QOS={record['qos']}",
            f"   JobState={state} Reason={record['state_reason']} Dependency=(null)",
            f"   Requeue=1 Restarts={record['restart_cnt']} BatchFlag=1 Reboot=0 "
            f"ExitCode={rc}:{sig}",
            f"   RunTime=00:00:00 TimeLimit={f'{days}-' if days else ''}{clock} TimeMin=N/A",
            f"   SubmitTime={_clock(number('submit_time'))} "
            f"EligibleTime={_clock(number('eligible_time'))}",
            f"   StartTime={_clock(number('start_time'))} EndTime={_clock(number('end_time'))} "
            f"Deadline=N/A",
            f"   Partition={record['partition']} AllocNode:Sid=simctld:1",
            f"   NodeList={record['nodes'] or '(null)'}",
            f"   NumNodes={number('node_count') or 1} NumCPUs={number('cpus') or 1} "
            f"NumTasks={number('tasks') or 1} CPUs/Task=1 ReqB:S:C:T=0:0:*:*",
            f"   ReqTRES={record['tres_req_str']} AllocTRES={record['tres_alloc_str']}",
            f"   JOB_GRES={record['tres_per_node'].replace('gres/', '') or '(null)'}",
        ]
        resources = record.get("job_resources") or {}
        gres = list(record.get("gres_detail") or [])
        for index, node in enumerate((resources.get("nodes") or {}).get("allocation", [])):
            cpus = [sock["index"] * CORES_PER_SOCKET + core["index"]
                    for sock in node["sockets"] for core in sock["cores"]
                    if "ALLOCATED" in core["status"]]
            lines.append(f"     Nodes={node['name']} CPU_IDs={_ranges(cpus)} "
                         f"Mem={node['memory']['allocated']} "
                         f"GRES={gres[index] if index < len(gres) else ''}")
        lines += [
            "   MinCPUsNode=1 MinMemoryCPU=2000M MinTmpDiskNode=0",
            "   OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null)",
            "   WorkDir=/home/sim",
        ]
        if record.get("comment"):
            lines.append(f"   Comment={record['comment']}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks) + ("\n" if blocks else "No jobs in the system\n")


# --- sacct -------------------------------------------------------------------------------------


def _sacct_record(templates: dict[str, Any], job: Job, st: SlurmState, cluster: str,
                  now: float) -> dict[str, Any]:
    run = job.runs[st.run] if st.run is not None else None
    record = json.loads(templates["sacct_job_text"])
    total = job.cpus_per_node * job.nodes
    record["job_id"] = job.job_id
    record["name"] = job.name
    record["user"] = record["group"] = job.user
    record["account"] = job.account
    record["partition"] = job.partition
    record["cluster"] = cluster
    record["association"] = {"account": job.account, "cluster": cluster, "partition": "",
                             "user": job.user, "id": _uid(job.user + job.account) % 1000}
    record["restart_cnt"] = st.restart
    record["array"] = {"job_id": job.array_job_id,
                       "limits": {"max": {"running": {"tasks": 0}}},
                       "task_id": _number(job.array_task_id or 0,
                                          set_=job.array_task_id is not None),
                       "task": ""}
    record["required"]["CPUs"] = total
    record["submit_line"] = (f"sbatch --parsable --job-name={job.name} --nodes={job.nodes} "
                             f"--ntasks={total} --partition={job.partition}"
                             + (f" --gres=gpu:a100:{job.gpus_per_node}"
                                if job.gpus_per_node else ""))
    requested = [
        {"type": "cpu", "name": "", "id": 1, "count": total},
        {"type": "mem", "name": "", "id": 2, "count": total * MEMORY_PER_CPU},
        {"type": "node", "name": "", "id": 4, "count": job.nodes},
        {"type": "billing", "name": "", "id": 5, "count": total},
    ]
    if job.gpus_per_node:
        requested.append({"type": "gres", "name": "gpu", "id": 1001,
                          "count": job.gpus_per_node * job.nodes})
    record["tres"] = {"requested": requested, "allocated": requested if run else []}
    start, end = st.start, st.end
    times = record["time"]
    times["submission"] = st.submission
    times["eligible"] = st.eligible
    times["start"] = start
    times["end"] = end
    times["limit"] = _number(job.time_limit)
    times["planned"] = _number(max(0, (start or int(now)) - st.eligible))
    times["elapsed"] = (end - start) if end else (int(now) - start if start else 0)
    record["state"] = {"current": [st.state], "reason": "None"}
    if run is None:
        record["nodes"] = "None assigned"
        record["allocation_nodes"] = 0
        record["flags"] = ["START_RECEIVED"] if st.state == "PENDING" else []
        record["exit_code"] = record["derived_exit_code"] = _exit(0, 0)
        return record
    record["nodes"] = _nodelist(run.hosts)
    record["allocation_nodes"] = job.nodes
    if st.state == "RUNNING":
        record["exit_code"] = record["derived_exit_code"] = _exit(0, 0)
    else:
        record["exit_code"] = record["derived_exit_code"] = _exit(run.exit_code, run.signal)
    return record


def _epoch(text: str) -> int:
    """sacct reads -S/-E as local time; also as epoch seconds or 'now'."""
    if text.isdigit():
        return int(text)
    if text.lower() == "now":
        return int(time.time())
    return int(datetime.fromisoformat(text).timestamp())


def sacct_document(timeline: Timeline, templates: dict[str, Any], now: float,
                   argv: Sequence[str], submitted: Sequence[dict[str, Any]] = ()
                   ) -> dict[str, Any]:
    """``sacct --json [-S T -E T -D -j ids -u users|-a --state s --name n --partition p]``;
    ``submitted``: what sbatch added (submits.py)."""
    opts, flags = _options(argv, {
        "-S": "start", "--starttime": "start", "-E": "end", "--endtime": "end",
        "-j": "jobs", "--jobs": "jobs", "-u": "user", "--user": "user", "--uid": "user",
        "-s": "state", "--state": "state", "--name": "name", "--partition": "partition",
        "-r": "partition"})
    start = _epoch(opts["start"][-1]) if "start" in opts else int(now) - 86400
    end = _epoch(opts["end"][-1]) if "end" in opts else int(now) + 1
    duplicates = "-D" in flags or "--duplicates" in flags
    ids = {int(i.split("_")[0].split(".")[0]) for i in _split(opts.get("jobs", []))}
    users = set(_split(opts.get("user", [])))
    names = set(_split(opts.get("name", [])))
    partitions = set(_split(opts.get("partition", [])))
    states = _states(_split(opts["state"])) if "state" in opts else None
    records = []
    for job in timeline.jobs:
        if ids and job.job_id not in ids and job.array_job_id not in ids:
            continue
        if (users and job.user not in users) or (names and job.name not in names) or (
                partitions and job.partition not in partitions):
            continue
        for st in sacct_records(job, now, duplicates):
            if not (st.eligible and st.eligible < end and (st.end >= start or st.end == 0)):
                continue
            if not _selected(st, states):
                continue
            records.append(_sacct_record(templates, job, st, timeline.cluster, now))
    for entry, tasks, st in submits.shown(submitted, now, None):
        first = submits.as_job(entry, tasks[0])
        if ids and not ids & {first.job_id, first.array_job_id}:
            continue
        if (users and entry["user"] not in users) or (names and entry["name"] not in names) or (
                partitions and entry["partition"] not in partitions):
            continue
        if not (st.eligible and st.eligible < end and (st.end >= start or st.end == 0)):
            continue
        if not _selected(st, states):
            continue
        record = _sacct_record(templates, first, st, timeline.cluster, now)
        if entry["array_size"] and st.state == "PENDING":
            record["job_id"] = entry["job_id"]
            record["array"]["task_id"] = _number(0, set_=False)
            record["array"]["task"] = submits.task_string(tasks)
        record["comment"] = {"administrator": "", "job": entry["comment"], "system": ""}
        record["submit_line"] = " ".join(["sbatch", *entry["args"]])
        records.append(record)
    head = json.loads(json.dumps(templates["sacct_head"]))
    head["meta"]["command"] = ["sacct", *argv]
    head["meta"]["slurm"]["cluster"] = timeline.cluster
    return {**head, "jobs": records}


# --- scontrol ----------------------------------------------------------------------------------


def _scontrol(timeline: Timeline, now: float, argv: Sequence[str],
              folder: Path) -> tuple[int, str, str]:
    words = list(argv)
    if not words or words[0] in ("version", "--version", "-V"):
        return 0, f"slurm {RELEASE}\n", ""
    if words[0] == "ping":
        return 0, "Slurmctld(primary) at simctld is UP\n", ""
    if words[:2] == ["show", "config"]:
        text = (FIXTURE / "scontrol-config.txt").read_text(encoding="utf-8")
        text = text.replace("lab2411", timeline.cluster)
        text += f"MinJobAge               = {timeline.min_job_age} sec\n"
        return 0, text, ""
    if words[:3] == ["show", "job", "-d"]:
        templates = json.loads((folder / "templates.json").read_text())
        for name in ("squeue_running", "squeue_pending", "sacct_job"):
            templates[name + "_text"] = json.dumps(templates[name])
        ids = words[3:4]
        argv = ["--states=all", *(f"--jobs={ids[0]}" for _ in ids)]
        document = squeue_document(timeline, templates, now, argv, submits.load(folder))
        if ids and not document["jobs"]:
            return 1, "", "slurm_load_jobs error: Invalid job id specified\n"
        return 0, scontrol_show_job(document), ""
    if words[:2] == ["write", "batch_script"] and len(words) >= 3:
        job_id = int(words[2]) if words[2].isdigit() else -1
        job = next((j for j in timeline.jobs if j.job_id == job_id), None)
        if job is None or squeue_state(job, now, timeline.min_job_age) is None:
            return 1, "", "slurm_job_batch_script error: Invalid job id specified\n"
        script = (f"#!/bin/bash\n#SBATCH --job-name={job.name}\n#SBATCH --nodes={job.nodes}\n"
                  f"#SBATCH --partition={job.partition}\nsrun ./simulate --job {job.job_id}\n")
        return 0, script, ""
    return 1, "", f"scontrol: the simulation does not answer: {' '.join(words)}\n"


def _sinfo(argv: Sequence[str]) -> tuple[int, str, str]:
    """``sinfo -N -h -o %N|%X|%Y|%Z``: every node's sockets, cores per socket, threads."""
    if list(argv) != ["-N", "-h", "-o", "%N|%X|%Y|%Z"]:
        return 1, "", f"sinfo: the simulation answers only -N -h -o %N|%X|%Y|%Z, not {argv}\n"
    lines = [f"{h}|{SOCKETS}|{CORES_PER_SOCKET}|1\n" for h in (*CPU_HOSTS, *GPU_HOSTS)]
    return 0, "".join(lines), ""


# --- faults and the call log -------------------------------------------------------------------


def arm(work: Path, command: str, fault: str) -> None:
    """Queue ``fault`` (fail, empty, slow:N) for the next ``--json`` call of ``command``."""
    with _locked(work) as state:
        state.setdefault(command, []).append(fault)


class _locked:
    """faults.json read and written under an exclusive flock."""

    def __init__(self, work: Path) -> None:
        self.work = work

    def __enter__(self) -> dict[str, list[str]]:
        self.lock = open(self.work / "faults.lock", "a+")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        path = self.work / "faults.json"
        self.state: dict[str, list[str]] = (
            json.loads(path.read_text()) if path.exists() else {})
        return self.state

    def __exit__(self, *exc: object) -> None:
        path = self.work / "faults.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, path)
        fcntl.flock(self.lock, fcntl.LOCK_UN)
        self.lock.close()


def disarm(work: Path, commands: Iterable[str]) -> dict[str, list[str]]:
    """Take back the faults still queued for ``commands``; return them."""
    with _locked(work) as state:
        return {c: state.pop(c) for c in list(commands) if state.get(c)}


def pending_faults(work: Path) -> dict[str, list[str]]:
    with _locked(work) as state:
        return {k: list(v) for k, v in state.items() if v}


def _take(work: Path, command: str) -> str:
    with _locked(work) as state:
        queue = state.get(command) or []
        return queue.pop(0) if queue else ""


def calls(work: Path) -> list[dict[str, Any]]:
    """Every stand-in call so far, in order of their start."""
    path = work / "calls.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    return sorted(out, key=lambda c: c["t"])


def _log(work: Path, entry: dict[str, Any]) -> None:
    line = (json.dumps(entry) + "\n").encode("utf-8")
    fd = os.open(work / "calls.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


# --- entry point -------------------------------------------------------------------------------


def main(command: str, argv: Sequence[str], work: str) -> int:
    """What the stand-in ``command`` does with ``argv``: print, log the call, return the code."""
    folder = Path(work)
    now = time.time()
    timeline = Timeline.from_dict(json.loads((folder / "timeline.json").read_text()))
    entry: dict[str, Any] = {"t": now, "cmd": command, "args": list(argv),
                             "ppid": os.getppid(), "fault": ""}
    code, out, err = 0, "", ""
    if command in ("squeue", "sacct") and "--version" in argv:
        out = f"slurm {RELEASE}\n"
    elif command in ("squeue", "sacct"):
        listing = command == "squeue" and "-o" in argv and "--json" not in argv
        fault = _take(folder, command) if "--json" in argv or listing else ""
        entry["fault"] = fault
        templates = json.loads((folder / "templates.json").read_text())
        for name in ("squeue_running", "squeue_pending", "sacct_job"):
            templates[name + "_text"] = json.dumps(templates[name])
        if fault == "fail":
            code = 1
            err = ("slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
                   if command == "squeue" else
                   "sacct: error: slurmdbd: Getting response to message type: "
                   "DBD_GET_JOBS_COND\nsacct: error: Problem talking to the database: "
                   "Connection refused\n")
        else:
            build = squeue_document if command == "squeue" else sacct_document
            document = build(timeline, templates, now, argv, submits.load(folder))
            if fault == "empty":
                document["jobs"] = []
            entry["jobs"] = len(document["jobs"])
            if listing:
                out = squeue_listing(document, argv[argv.index("-o") + 1])
            else:
                # Slurm indents by 2; unindented JSON keeps to json's C encoder, 20x faster
                out = json.dumps(document, ensure_ascii=False) + "\n"
            if fault.startswith("slow:"):
                time.sleep(float(fault.split(":", 1)[1]))
    elif command == "sbatch":
        fault = _take(folder, command)
        entry["fault"] = fault
        script = sys.stdin.read()
        job_id, out, err, code = submits.sbatch(folder, argv, script, now=now,
                                                seed=timeline.seed, fault=fault,
                                                ppid=os.getppid())
        entry["job_id"] = job_id
        if fault.startswith("hang:"):
            entry["rc"] = code
            entry["t_end"] = time.time()
            _log(folder, entry)  # now: the caller's timeout kills this process
            time.sleep(float(fault.split(":", 1)[1]))
            sys.stdout.write(out)
            return code
    elif command == "scancel":
        fault = _take(folder, command)
        entry["fault"] = fault
        code, out, err = submits.scancel(folder, argv, now, fault)
    elif command == "scontrol":
        code, out, err = _scontrol(timeline, now, argv, folder)
    elif command == "sinfo":
        code, out, err = _sinfo(argv)
    else:
        code, err = 1, f"{command}: not simulated\n"
    entry["rc"] = code
    entry["t_end"] = time.time()
    _log(folder, entry)
    sys.stdout.write(out)
    sys.stdout.flush()
    sys.stderr.write(err)
    sys.stderr.flush()
    if command == "sbatch" and entry["fault"].startswith("kill:"):
        submits.kill_caller_later(os.getppid(), float(entry["fault"].split(":", 1)[1]),
                                  lambda line: _log(folder, line))
    return code


def install(work: Path, timeline: Timeline, commands: Sequence[str] = COMMANDS) -> Path:
    """Write the timeline, the templates and the stand-in commands into ``work``; return
    ``work/bin`` for ``slurm.bin_dir``."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "timeline.json").write_text(json.dumps(timeline.to_dict()))
    (work / "templates.json").write_text(json.dumps(build_templates()))
    (work / "faults.json").write_text("{}")
    bin_dir = work / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in commands:
        path = bin_dir / name
        path.write_text(
            f"#!{sys.executable}\n"
            "import sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from tests.chaos.slurmsim import main\n"
            f"sys.exit(main({name!r}, sys.argv[1:], {str(work)!r}))\n")
        path.chmod(0o755)
    return bin_dir
