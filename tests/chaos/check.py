"""What a chaos run must leave behind, checked from cc-backend's tables, its request log, the
stand-ins' call log and state.db against the timeline.

    findings = check(result)         # {assertion: [Finding, ...]}, every assertion present
    figures(result, findings)        # the numbers for BENCHMARKS.md

Assertions (each a key of ``check``'s answer; an empty list means it held):
- ``lost``: every run that started has a record (jobId, cluster, startTime). The one exception is
  cc-backend's own duplicate rule (a second run of a job id within 24 h is refused with 422): such
  a run may have no record if cc-backend holds another run of that job and slurm-sync recorded
  this one as refused. Those are counted (``duplicate_rule``), not failed.
- ``duplicated``: no run has two records; ``invented``: no record matches no run (a job cancelled
  while pending never ran and has none).
- ``not_stopped``: every record of a run that ended is stopped; ``wrong_stop``: with stopTime =
  the run's end and jobState = ``cc_state`` of Slurm's end state (REQUEUED is ``cancelled``).
- ``early_stop``: no stop_job request (answered or not) arrived before its run ended, and none
  named a run that does not exist.
- ``requeue``: each run of a requeued job is its own record (its own start, hosts, stop), and
  what state.db says was delivered is what cc-backend holds.
- ``wrong_fields``: user, project, partition, hosts, numNodes, arrayJobId and, when sent, each
  host's hwthreads are the run's.
- ``degraded``: no start went out without hwthreads while sacct said the run was still running,
  or after a successful squeue had shown its cores.
- ``refused``: nothing in state.db is refused for good but the duplicate rule's refusals;
  ``outbox``: the outbox is empty at the end.
- ``exit_codes``: a cycle whose ``squeue`` (of its view: its first) failed exits 3.

Against the bank (myBRC keeps one record per job id, ``jobslurmid``):
- ``lost``/``invented``: every job that ran has a record, none that never ran has one;
- ``charged``: the record carries the actual cost of all the job's runs (price x cpus x elapsed,
  half-up to cents, summed: a requeued job's earlier runs are added to it), and the last run's
  start, end, state, account and partition;
- ``usage``: each account's and user's usage is the sum of their records: nothing charged twice
  (a start POST and an end PUT after a kill, a retried PUT) and no difference lost;
- ``every_run_charged``: the usage covers every run, a requeued job's earlier runs too;
- ``early_stop``: no end report arrived before its run ended; plus ``refused``, ``outbox`` and
  ``exit_codes`` as above.

Against Buildkite (the connector submits Slurm jobs for scheduled CI jobs and cancels them), from
the emulator's job timelines, what the stand-in sbatch kept (submits.py), the simulated agents'
log and the call log:
- ``lost``: every job of our queue that its user never cancelled was submitted, acquired once
  by one of our agents and passed;
- ``duplicated``: no Buildkite job was submitted to Slurm twice (two jobs or array tasks whose
  script runs it), whatever happened between an sbatch and the commit of its cycle (a kill -9,
  an answer lost or late);
- ``invented``: every Slurm job we submitted runs a Buildkite job that exists and is of our
  queue (its ``bk:``/map reference names the job's own pipeline and build);
- ``left_running``: at the end no Slurm job of ours is pending or running (a job of a cancelled
  build that had been submitted was scancel'd or ended by itself);
- ``wrong_cancel``: no scancel (full or ``--signal``) reached a Slurm job whose Buildkite job
  still wanted it: scheduled (waiting for its agent) or held by that very job's agent, nor
  named a job that is not ours;
- ``refused`` and ``outbox`` as above; ``exit_codes``: a cycle whose squeue failed exits 3, one
  whose scancel or single-job sbatch failed does not exit 0, ``slurm-sync status`` after it
  shows what waits in the outbox, and the status after the drain shows nothing waiting or
  behind.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from slurm_sync.connectors.clustercockpit import cc_state
from slurm_sync.slurm.model import JobState
from tests.chaos.harness import Cycle, Result
from tests.chaos.services import BK_QUEUE, CC_CLUSTER, price
from tests.chaos.timeline import Job, Run, sacct_records, squeue_state

__all__ = ["ASSERTIONS", "BANK_ASSERTIONS", "BUILDKITE_ASSERTIONS", "Finding", "assertions_of",
           "check", "figures"]

ASSERTIONS = ("lost", "duplicated", "invented", "not_stopped", "wrong_stop", "early_stop",
              "requeue", "wrong_fields", "degraded", "refused", "outbox", "exit_codes")
BANK_ASSERTIONS = ("lost", "invented", "charged", "usage", "every_run_charged", "early_stop",
                   "refused", "outbox", "exit_codes")
BUILDKITE_ASSERTIONS = ("lost", "duplicated", "invented", "left_running", "wrong_cancel",
                        "refused", "outbox", "exit_codes")


def assertions_of(service: str) -> tuple[str, ...]:
    return {"bank": BANK_ASSERTIONS, "buildkite": BUILDKITE_ASSERTIONS}.get(service, ASSERTIONS)


DUPLICATE_WINDOW = 86400
EXIT_SLURM = 3


@dataclass(frozen=True)
class Finding:
    """One broken promise: which assertion, which job (or cycle), what was seen."""

    assertion: str
    job_id: int | None
    detail: str

    def __str__(self) -> str:
        who = f"job {self.job_id}: " if self.job_id is not None else ""
        return f"{self.assertion}: {who}{self.detail}"


def _key(cluster: str, job_id: int, start: int) -> str:
    return f"{cluster}/{job_id}/{start}"


def _body(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _cycle_at(cycles: list[Cycle], at: float) -> Cycle | None:
    """The cycle that was running at ``at`` and could send requests (not a locked-out one)."""
    alive = [c for c in cycles if c.launched <= at <= c.alive_until and c.exit_code != 75]
    return alive[-1] if alive else None


class _Context:
    def __init__(self, result: Result) -> None:
        self.result = result
        self.timeline = result.timeline
        self.cluster = result.timeline.cluster
        self.jobs = {j.job_id: j for j in result.timeline.jobs}
        self.runs: dict[tuple[int, int], tuple[Job, int, Run]] = {
            (j.job_id, r.start): (j, i, r) for j, i, r in result.timeline.runs()}
        self.records: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
        for row in result.records if result.service not in ("bank", "buildkite") else ():
            self.records[(row["jobId"], row["startTime"])].append(row)
        self.deliveries: dict[tuple[str, str], dict[str, Any]] = {
            (d["key"], d["kind"]): d for d in result.deliveries}
        self.starts = [(q, _body(q["body"])) for q in result.requests
                       if q["path"] == "/api/jobs/start_job/"]
        self.stops = [(q, _body(q["body"])) for q in result.requests
                      if q["path"] == "/api/jobs/stop_job/"]
        by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for call in result.calls:
            by_pid[call["ppid"]].append(call)
        self.calls_of = by_pid
        self.killed = {c.pid for c in result.cycles if c.killed}

    def status(self, job_id: int, start: int, kind: str) -> str | None:
        found = self.deliveries.get((_key(self.cluster, job_id, start), kind))
        return None if found is None else str(found["status"])

    def duplicate_rule_applies(self, job: Job, run: Run) -> bool:
        """cc-backend holds another run of this job id within 24 h, and state.db says this run's
        start was refused for good."""
        held = [s for (jid, s), rows in self.records.items() if jid == job.job_id and rows
                and s != run.start and abs(run.start - s) < DUPLICATE_WINDOW]
        return bool(held) and self.status(job.job_id, run.start, "start") == "permanent"


def check(result: Result) -> dict[str, list[Finding]]:
    """Every assertion of the run's service with its findings (empty: it held)."""
    ctx = _Context(result)
    out: dict[str, list[Finding]] = {name: [] for name in assertions_of(result.service)}

    def add(name: str, job_id: int | None, detail: str) -> None:
        out[name].append(Finding(name, job_id, detail))

    if result.service == "bank":
        _check_bank(ctx, add)
    elif result.service == "buildkite":
        _check_buildkite(_Kite(result), add)
    else:
        _check_cc(ctx, add)
    _check_common(ctx, add)
    return out


def _check_cc(ctx: _Context, add: Any) -> None:
    result = ctx.result
    api = result.api_version

    # one record per run; none without a run
    for (job_id, start), (job, index, run) in ctx.runs.items():
        rows = ctx.records.get((job_id, start), [])
        requeued = len(job.runs) > 1
        if not rows:
            if requeued and ctx.duplicate_rule_applies(job, run):
                continue
            said = ctx.status(job_id, start, "start")
            add("lost", job_id, f"run {index + 1}/{len(job.runs)} started at {start} "
                f"({run.state}, {run.end - run.start} s) has no record; state.db says "
                f"{said or 'nothing'}")
            if requeued:
                add("requeue", job_id, f"run {index + 1} (start {start}) has no record and "
                    f"was not refused by the duplicate rule; state.db: {said or 'nothing'}")
            continue
        if len(rows) > 1:
            add("duplicated", job_id, f"{len(rows)} records for the run started at {start}")
        row = rows[0]
        # stop
        if row["jobState"] == "running":
            add("not_stopped", job_id, f"run started at {start} ended {run.state} at "
                f"{run.end}, its record is still running (state.db start: "
                f"{ctx.status(job_id, start, 'start') or 'nothing'}, stop: "
                f"{ctx.status(job_id, start, 'stop') or 'nothing'})")
        else:
            want = cc_state(JobState[run.state], api)
            stop_time = row["startTime"] + row.get("duration", 0)
            if stop_time != run.end or row["jobState"] != want:
                add("wrong_stop", job_id, f"run started at {start}: stopped as "
                    f"{row['jobState']} at {stop_time}, ended {run.state} ({want}) at "
                    f"{run.end}")
                if requeued:
                    add("requeue", job_id, f"run {index + 1}'s record carries another stop "
                        f"({row['jobState']} at {stop_time}, run ended {run.end})")
        # fields
        problems = []
        expect = {"user": job.user, "project": job.account, "partition": job.partition,
                  "cluster": CC_CLUSTER, "numNodes": len(run.hosts)}
        for name, value in expect.items():
            if row.get(name) != value:
                problems.append(f"{name} {row.get(name)!r} != {value!r}")
        if (row.get("arrayJobId") or 0) != job.array_job_id:
            problems.append(f"arrayJobId {row.get('arrayJobId')!r} != {job.array_job_id}")
        hosts = [r.get("hostname") for r in row.get("resources") or []]
        if hosts != run.hosts:
            problems.append(f"hosts {hosts} != {run.hosts}")
            if requeued:
                add("requeue", job_id, f"run {index + 1}'s record has hosts {hosts}, the run "
                    f"ran on {run.hosts}")
        for resource in row.get("resources") or []:
            if resource.get("hwthreads") is None or resource.get("hostname") not in run.hosts:
                continue
            cores = run.cores[run.hosts.index(resource["hostname"])]
            if sorted(resource["hwthreads"]) != cores:
                problems.append(f"{resource['hostname']} hwthreads {resource['hwthreads']} "
                                f"!= {cores}")
        if problems:
            add("wrong_fields", job_id, f"run started at {start}: " + "; ".join(problems))
    for (job_id, start), rows in ctx.records.items():
        if (job_id, start) not in ctx.runs:
            job = ctx.jobs.get(job_id)
            what = ("a job cancelled while pending" if job and job.cancel_at
                    else "no such job" if job is None else "no run at that time")
            add("invented", job_id, f"{len(rows)} record(s) with startTime {start}: {what}")
    # requeued runs: state.db must agree with cc-backend on which run it holds
    for (job_id, start), (job, index, _run) in ctx.runs.items():
        if len(job.runs) < 2:
            continue
        said = ctx.status(job_id, start, "start")
        if said in ("done", "already_done") and not ctx.records.get((job_id, start)):
            add("requeue", job_id, f"state.db has run {index + 1} (start {start}) as "
                f"delivered ({said}); cc-backend has no record of it")
    # stops: never before the run ended, never for a run that does not exist
    for request, body in ctx.stops:
        if not body and request["status"] == 400:
            # a request torn by a kill of its sender (the lab's chaos run, seed 11: the body
            # never arrived): the service could not read it and refused it; it stopped nothing
            continue
        job_id, start = body.get("jobId"), body.get("startTime")
        found = ctx.runs.get((job_id, start)) if start is not None else None
        if found is None:
            add("early_stop", job_id, f"stop_job for a run that does not exist "
                f"(startTime {start}, answered {request['status']})")
            continue
        _, _, run = found
        if request["received"] < run.end:
            add("early_stop", job_id, f"stop_job arrived at {request['received']:.1f}, the run "
                f"started at {start} ended at {run.end}")
    # degraded starts
    _degraded(ctx, add)


def _check_common(ctx: _Context, add: Any) -> None:
    """Nothing refused (but cc-backend's duplicate rule), the outbox empty, exit codes."""
    result = ctx.result
    for delivery in result.deliveries:
        if delivery["status"] != "permanent":
            continue
        _, job_text, start_text = [*delivery["key"].split("/"), "", ""][:3]
        found = ctx.runs.get((int(job_text), int(start_text))) if (
            job_text.isdigit() and start_text.isdigit()) else None
        if (result.service != "bank" and found is not None
                and ctx.duplicate_rule_applies(found[0], found[2])):
            continue
        detail = json.loads(delivery["detail"]).get("detail", "") if delivery["detail"] else ""
        add("refused", int(job_text) if job_text.isdigit() else None,
            f"{delivery['kind']} {delivery['key']} refused for good: {detail}")
    for entry in result.outbox:
        add("outbox", None, f"{entry['kind']} {entry['key']} still queued after "
            f"{entry['attempts']} attempt(s): {entry['last_error']}")
    # exit codes
    for cycle in result.cycles:
        if cycle.killed or cycle.exit_code is None:
            continue
        # the cycle's view is its first squeue (--json, or the plain listing): a connector's
        # own look-up after it (the Buildkite connector asks again about jobs it would cancel)
        # failing changes nothing the cycle did, and the exit code does not say it
        view = [c for c in ctx.calls_of.get(cycle.pid, [])
                if c["cmd"] == "squeue" and "--version" not in c["args"]][:1]
        failed = [c for c in view if c["rc"] != 0]
        if failed and cycle.exit_code != EXIT_SLURM:
            add("exit_codes", None, f"cycle {cycle.index} (pid {cycle.pid}): squeue failed, "
                f"exit code {cycle.exit_code}")


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_cost(job: Job, run: Run) -> Decimal:
    """What the bank charges for a run: price x allocated cpus x hours, half-up to cents."""
    cpus = job.cpus_per_node * job.nodes
    return (price(job.partition) * cpus * Decimal(run.end - run.start) / 3600).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_UP)


def _check_bank(ctx: _Context, add: Any) -> None:
    """Every ended job charged exactly once, with its own figures; usage adds up."""
    result = ctx.result
    records = {str(r["jobslurmid"]): r for r in result.records}
    expected_total: dict[str, Decimal] = defaultdict(Decimal)
    charged_total: dict[str, Decimal] = defaultdict(Decimal)
    for job in ctx.timeline.jobs:
        record = records.pop(str(job.job_id), None)
        if not job.runs:
            if record is not None:
                add("invented", job.job_id, f"a record for a job cancelled while pending: "
                    f"{record['amount']} SU")
            continue
        last = job.runs[-1]
        if record is None:
            add("lost", job.job_id, f"{len(job.runs)} run(s), the last ended {last.state} at "
                f"{last.end}: no record (state.db end: "
                f"{ctx.status(job.job_id, last.start, 'stop') or 'nothing'})")
            continue
        amount = Decimal(record["amount"])
        for run in job.runs:
            expected_total[job.account] += run_cost(job, run)
        charged_total[job.account] += amount
        problems = []
        want = sum((run_cost(job, run) for run in job.runs), Decimal("0.00"))
        if amount != want:
            problems.append(f"amount {amount} != {want} (the cost of its {len(job.runs)} "
                            "run(s))")
        for name, value in (("startdate", _iso(last.start)), ("enddate", _iso(last.end)),
                            ("accountid", job.account), ("partition", job.partition),
                            ("jobstatus", last.state)):
            if record.get(name) != value:
                problems.append(f"{name} {record.get(name)!r} != {value!r}")
        if problems:
            add("charged", job.job_id, "; ".join(problems))
    for jobslurmid, record in records.items():
        add("invented", int(jobslurmid) if jobslurmid.isdigit() else None,
            f"a record for no job of the timeline: {record['amount']} SU")
    # the service's own usage is the sum of its records: no double charge, no lost difference
    by_account: dict[str, Decimal] = defaultdict(Decimal)
    by_user: dict[str, Decimal] = defaultdict(Decimal)
    users = {str(j.job_id): j.user for j in ctx.timeline.jobs}
    for record in result.records:
        by_account[record["accountid"]] += Decimal(record["amount"])
        user = users.get(str(record["jobslurmid"]), "?")
        by_user[f"{record['accountid']}/{user}"] += Decimal(record["amount"])
    for name, value in sorted(result.usage.items()):
        want = (by_user if "/" in name else by_account).get(name, Decimal("0.00"))
        if Decimal(value) != want:
            add("usage", None, f"{name}: usage {value} SU, its records add up to {want}")
    for account, want in sorted(expected_total.items()):
        if charged_total[account] != want:
            add("every_run_charged", None, f"account {account}: {charged_total[account]} SU "
                f"charged, its runs cost {want} (requeued jobs' earlier runs included)")
    # no end reported before the run ended
    for request in result.requests:
        if request["method"] != "PUT" or not request["path"].startswith("/jobs/"):
            continue
        body = _body(request["body"])
        job = ctx.jobs.get(int(body.get("jobslurmid") or 0))
        run = next((r for r in job.runs if _iso(r.start) == body.get("startdate")), None) if (
            job) else None
        if run is None:
            add("early_stop", job.job_id if job else None,
                f"end report for a run that does not exist: {request['body'][:200]}")
        elif request["received"] < run.end:
            add("early_stop", job.job_id if job else None, f"end report arrived at "
                f"{request['received']:.1f}, the run started at {run.start} ended at {run.end}")


def _degraded(ctx: _Context, add: Any) -> None:
    """Starts accepted without hwthreads that slurm-sync could have sent whole: sent while sacct
    said the run was still running (the run must wait for squeue's view), or planned after a
    successful squeue of a cycle that lived had shown its cores. The plan of a payload is taken
    to be made at the first start_job request of the run: a payload planned without cores (the
    run ended while squeue failed) and retried from the outbox is no new finding."""
    first: dict[tuple[Any, Any], float] = {}
    for request, body in ctx.starts:
        ident = (body.get("jobId"), body.get("startTime"))
        first[ident] = min(first.get(ident, request["received"]), request["received"])
    for request, body in ctx.starts:
        if request["status"] not in (200, 201):
            continue
        resources = body.get("resources") or []
        if all(r.get("hwthreads") for r in resources):
            continue
        found = ctx.runs.get((body.get("jobId"), body.get("startTime")))
        if found is None:
            continue  # "invented" says it
        job, index, run = found
        sent = request["received"]
        planned = first[(body.get("jobId"), body.get("startTime"))]
        cycle = _cycle_at(ctx.result.cycles, sent)
        why = ""
        if cycle is not None:
            sacct = [c for c in ctx.calls_of.get(cycle.pid, [])
                     if c["cmd"] == "sacct" and "--json" in c["args"] and c["rc"] == 0]
            if sacct and any(st.run == index and st.state == "RUNNING"
                             for st in sacct_records(job, sacct[0]["t"], True)):
                why = "sacct said the run was still running"
        if not why:
            for pid, calls in ctx.calls_of.items():
                if pid in ctx.killed:
                    continue
                for call in calls:
                    if (call["cmd"] != "squeue" or "--json" not in call["args"]
                            or call["rc"] != 0 or call.get("fault") == "empty"
                            or not run.start <= call["t"] < planned
                            or not _asked_for(call["args"], job)):
                        continue
                    st = squeue_state(job, call["t"], ctx.timeline.min_job_age)
                    if st is not None and st.run == index and st.allocation:
                        why = f"squeue showed its cores at {call['t']:.1f}"
                        break
                if why:
                    break
        if why:
            notes = (body.get("metaData") or {}).get("slurmSyncNotes", "")
            add("degraded", job.job_id, f"start of the run at {run.start} sent at {sent:.1f} "
                f"without hwthreads, but {why} (notes: {notes!r})")


def _asked_for(args: Sequence[str], job: Job) -> bool:
    """Whether a ``squeue --json`` call printed ``job``'s record: it names no job ids (every
    job), or names the job's own id or its array's."""
    ids = [a.split("=", 1)[1] for a in args if a.startswith("--jobs=")]
    if not ids:
        return True
    asked = {int(i) for i in ids[0].split(",") if i.isdigit()}
    return job.job_id in asked or bool(job.array_job_id and job.array_job_id in asked)


def _stop_delays(ctx: _Context) -> list[float]:
    """Seconds from each run's end to the stop (cc) or end report (bank) the service took."""
    done: dict[tuple[int, int], float] = {}
    if ctx.result.service == "bank":
        for request in ctx.result.requests:
            if request["method"] == "PUT" and request["status"] == 200:
                body = _body(request["body"])
                job = ctx.jobs.get(int(body.get("jobslurmid") or 0))
                run = next((r for r in job.runs if _iso(r.start) == body.get("startdate")),
                           None) if job else None
                if run is not None:
                    done.setdefault((job.job_id, run.start), request["received"] - run.end)
    else:
        for request, body in ctx.stops:
            found = ctx.runs.get((body.get("jobId"), body.get("startTime")))
            if request["status"] == 200 and found is not None:
                done.setdefault((found[0].job_id, found[2].start),
                                request["received"] - found[2].end)
    return list(done.values())


def _endpoint(path: str) -> str:
    """``/api/jobs/start_job/`` -> start_job; ``/jobs/1234/`` -> jobs/ID; ``/can_submit_job/
    ...`` -> can_submit_job."""
    parts = [p for p in path.split("/") if p and p != "api"]
    if not parts:
        return "/"
    if parts[0] == "jobs" and len(parts) > 1:
        return parts[-1] if not parts[1].isdigit() else "jobs/ID"
    return parts[0]


def _faults(result: Result, requests: Counter[int]) -> dict[str, int]:
    """The faults every run injects: the service's (by reply status; -1 a hang, -2 a reset)
    and the stand-in Slurm's."""
    return {
        "service_5xx": sum(n for status, n in requests.items() if status >= 500),
        "service_429": requests.get(429, 0),
        "service_hang": requests.get(-1, 0),
        "service_reset": requests.get(-2, 0),
        "squeue_failed": sum(1 for c in result.calls if c["fault"] == "fail"
                             and c["cmd"] == "squeue"),
        "sacct_empty": sum(1 for c in result.calls if c["fault"] == "empty"),
        "slow_answers": sum(1 for c in result.calls if c["fault"].startswith("slow")),
    }


def figures(result: Result, findings: dict[str, list[Finding]]) -> dict[str, Any]:
    """The numbers of one run, for the report and BENCHMARKS.md."""
    if result.service == "buildkite":
        return figures_buildkite(result, findings)
    timeline = result.timeline
    runs = timeline.runs()
    requests = Counter(q["status"] for q in result.requests)
    by_path = Counter(f"{q['method']} {_endpoint(q['path'])}" for q in result.requests)
    faults = _faults(result, requests)
    ctx = _Context(result)
    bank = result.service == "bank"
    duplicate_rule = 0 if bank else sum(
        1 for (jid, s), (job, _, run) in ctx.runs.items()
        if not ctx.records.get((jid, s)) and len(job.runs) > 1
        and ctx.duplicate_rule_applies(job, run))
    delays = sorted(_stop_delays(ctx))
    return {
        "seed": result.scenario.seed,
        "service": result.service,
        "stop_delay_p50": round(delays[len(delays) // 2], 1) if delays else None,
        "stop_delay_max": round(delays[-1], 1) if delays else None,
        "stops_later_than_min_job_age": sum(1 for d in delays
                                            if d > result.timeline.min_job_age),
        "cc_version": "" if bank else result.scenario.cc_version,
        "jobs": len(timeline.jobs),
        "runs": len(runs),
        "short_runs": sum(1 for _, _, r in runs if r.end - r.start < result.scenario.poll),
        "requeued_jobs": sum(1 for j in timeline.jobs if len(j.runs) > 1),
        "array_tasks": sum(1 for j in timeline.jobs if j.array_job_id),
        "cancelled_pending": sum(1 for j in timeline.jobs if j.cancel_at is not None),
        "gpu_jobs": sum(1 for j in timeline.jobs if j.gpus_per_node),
        "records": len(result.records),
        "records_running": sum(1 for r in result.records if r.get("jobState") == "running"
                               or (bank and not r.get("enddate"))),
        "duplicate_rule_refusals": duplicate_rule,
        "requests": len(result.requests),
        "requests_by_endpoint": dict(by_path),
        "faults": faults,
        "kills": result.kills,
        "cycles": len(result.cycles),
        "exit_codes": dict(Counter(str(c.exit_code) for c in result.cycles)),
        "slurm_calls": len(result.calls),
        "drained": result.drained,
        "wall_seconds": round(result.wall, 1),
        "failed": {k: len(v) for k, v in findings.items() if v},
        "passed": not any(findings.values()),
    }


# --- Buildkite ----------------------------------------------------------------------------------

BK_HELD = frozenset({"assigned", "accepted", "running"})
EXIT_OK = 0


class _Kite:
    """What a Buildkite run left, indexed for the checks: Buildkite's jobs and their state
    over time, every Slurm job (or array task) submitted and which Buildkite job it runs, the
    agents' log and the stand-ins' calls."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self.t0 = result.timeline.t0
        self.jobs: dict[str, dict[str, Any]] = {j["id"]: j for j in result.records}
        self.states: dict[str, list[tuple[float, str]]] = {
            j["id"]: [(at, value) for at, kind, value in j["timeline"] if kind == "state"]
            for j in result.records}
        self.entries: list[dict[str, Any]] = list(result.extra.get("submitted", []))
        # (entry, task) per Buildkite job its script runs; and by scancel's names for them
        self.runs_of: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
        self.by_name: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
        for entry in self.entries:
            for task in entry["tasks"]:
                ref = task.get("ref")
                if ref:
                    self.runs_of[ref.rsplit("/", 1)[-1]].append((entry, task))
                if entry["array_size"]:
                    self.by_name[f"{entry['job_id']}_{task['task']}"].append((entry, task))
                    self.by_name[str(entry["job_id"])].append((entry, task))
                    if task["job_id"] is not None and task["job_id"] != entry["job_id"]:
                        self.by_name[str(task["job_id"])].append((entry, task))
                else:
                    self.by_name[str(entry["job_id"])].append((entry, task))
        self.log: list[dict[str, Any]] = list(result.extra.get("agent_log", []))
        self.acquired: dict[str, float] = {  # slurm id -> when its agent acquired its job
            e["slurm_id"]: e["t"] for e in self.log if e["what"] == "acquire"
            and e["status"] == 200}
        self.cycles = {c.pid: c for c in result.cycles}

    def state_at(self, job: str, at: float) -> str | None:
        found = None
        for when, value in self.states.get(job, []):
            if when > at:
                break
            found = value
        return found

    def ours(self, job: dict[str, Any]) -> bool:
        return job.get("queue") == BK_QUEUE

    def cancelled_by_user(self, job: str) -> float | None:
        """When the job's user cancelled it (it went canceling or canceled), or None."""
        return next((at for at, value in self.states.get(job, [])
                     if value in ("canceling", "canceled")), None)

    def accepted(self, job: str) -> int:
        return sum(1 for _, value in self.states.get(job, []) if value == "accepted")

    @staticmethod
    def sid(entry: dict[str, Any], task: dict[str, Any]) -> str:
        return (f"{entry['job_id']}_{task['task']}" if entry["array_size"]
                else str(entry["job_id"]))

    def sbatch_call(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        return next((c for c in self.result.calls if c["cmd"] == "sbatch"
                     and c.get("job_id") == entry["job_id"]), None)

    def how(self, entry: dict[str, Any], task: dict[str, Any]) -> str:
        """One submission told: Slurm id, when, by which cycle, and what befell that cycle."""
        call = self.sbatch_call(entry)
        said = f"Slurm {self.sid(entry, task)} at +{entry['t'] - self.t0:.1f} s"
        if call is None:
            return said
        cycle = self.cycles.get(call["ppid"])
        if cycle is not None:
            said += f" by cycle {cycle.index}"
            if cycle.killed:
                said += " (killed)"
        if call.get("fault"):
            said += f" (sbatch fault {call['fault']})"
        if entry["array_size"]:
            said += f" (array of {entry['array_size']})"
        return said + f", ended {task['state'] or 'not'}"


def _check_buildkite(kite: _Kite, add: Any) -> None:
    result = kite.result
    # lost: every job of ours its user never cancelled ran once, by one of our agents, passed
    for job_id, job in kite.jobs.items():
        if not kite.ours(job) or kite.cancelled_by_user(job_id) is not None:
            continue
        runs = kite.runs_of.get(job_id, [])
        if job["state"] != "passed" or kite.accepted(job_id) != 1:
            states = "/".join(v for _, v in kite.states[job_id])
            add("lost", None, f"Buildkite job {job_id} ({job['pipeline']} #{job['build']}) "
                f"ended {job['state']} ({states}), never cancelled by its user; "
                f"submitted {len(runs)} time(s): "
                + ("; ".join(kite.how(e, t) for e, t in runs) or "never"))
    # duplicated: two Slurm jobs (or tasks) for one Buildkite job
    for job_id, runs in kite.runs_of.items():
        if len(runs) > 1:
            refused = [e for e in kite.log if e["job"] == job_id and e["what"] == "acquire"
                       and e["status"] != 200]
            add("duplicated", None, f"Buildkite job {job_id} submitted {len(runs)} times: "
                + "; ".join(kite.how(e, t) for e, t in runs)
                + (f"; {len(refused)} acquire(s) refused" if refused else ""))
    # invented: a Slurm job for no job of ours, or for another build's or pipeline's
    for entry in kite.entries:
        for task in entry["tasks"]:
            ref = task.get("ref")
            job = kite.jobs.get(ref.rsplit("/", 1)[-1]) if ref else None
            sid = kite.sid(entry, task)
            if job is None:
                add("invented", None, f"Slurm {sid} runs {ref or 'no Buildkite job'}: no such "
                    f"job (comment {entry['comment']!r})")
            elif not kite.ours(job):
                add("invented", None, f"Slurm {sid} runs Buildkite job {job['id']} of queue "
                    f"{job.get('queue')!r}, not ours")
            elif ref != f"{job['pipeline']}/{job['build']}/{job['id']}":
                add("invented", None, f"Slurm {sid} names {ref}: the job is of "
                    f"{job['pipeline']} #{job['build']}")
            elif kite.state_at(job["id"], entry["t"]) is None:
                add("invented", None, f"Slurm {sid} submitted at +{entry['t'] - kite.t0:.1f} s "
                    f"for Buildkite job {job['id']}, created later")
    # left running: nothing of ours pending or running at the end
    for entry in kite.entries:
        for task in entry["tasks"]:
            if task["end"] is None:
                job_id = (task.get("ref") or "").rsplit("/", 1)[-1]
                state = kite.jobs.get(job_id, {}).get("state")
                what = "pending" if task["start"] is None else "running"
                gone = kite.cancelled_by_user(job_id)
                add("left_running", None, f"Slurm {kite.sid(entry, task)} is still {what} at "
                    f"the end; its Buildkite job {job_id or '?'} is {state}"
                    + (f" (cancelled at +{gone - kite.t0:.1f} s)" if gone else ""))
    # wrong cancels: never a job still wanted, never one not ours
    for call in result.calls:
        if call["cmd"] != "scancel" or call.get("fault") == "fail":
            continue
        signal = any(a.startswith(("--signal", "-s")) for a in call["args"])
        what = "scancel --signal" if signal else "scancel"
        words = [a for a in call["args"] if not a.startswith("-")]
        for word in words:
            targets = kite.by_name.get(word, [])
            if not targets:
                add("wrong_cancel", None, f"{what} at +{call['t'] - kite.t0:.1f} s named {word}: "
                    f"no job of ours")
                continue
            for entry, task in targets:
                if task["end"] is not None and task["end"] < call["t"]:
                    continue  # over already: it changed nothing
                job_id = (task.get("ref") or "").rsplit("/", 1)[-1]
                state = kite.state_at(job_id, call["t"])
                mine = kite.acquired.get(kite.sid(entry, task))
                if state == "scheduled" or (state in BK_HELD and mine is not None
                                            and mine <= call["t"]):
                    add("wrong_cancel", None, f"{what} of Slurm {kite.sid(entry, task)} at "
                        f"+{call['t'] - kite.t0:.1f} s: its Buildkite job {job_id} was {state}"
                        + (" by this job's agent" if state in BK_HELD else "")
                        + f" (it ended {kite.jobs.get(job_id, {}).get('state')})")
    # exit codes and status: a failed scancel or single sbatch is not a clean cycle
    for cycle in result.cycles:
        if cycle.killed or cycle.exit_code is None or cycle.exit_code == 75:
            continue
        failed = [c for c in kite.result.calls if c["ppid"] == cycle.pid and (
            (c["cmd"] == "scancel" and c.get("fault") == "fail")
            or (c["cmd"] == "sbatch" and c.get("fault") in ("fail", "lost")
                and not any(a.startswith("--array") for a in c["args"]))
            or (c["cmd"] == "sbatch" and c.get("fault", "").startswith("hang")
                and not any(a.startswith("--array") for a in c["args"])))]
        if not failed:
            continue
        names = ", ".join(f"{c['cmd']} {c['fault']}" for c in failed)
        if cycle.exit_code == EXIT_OK:
            add("exit_codes", None, f"cycle {cycle.index} (pid {cycle.pid}): {names}, yet "
                f"exit code 0")
        depth = _outbox_of(cycle.status)
        later = [c for c in result.cycles if c.index > cycle.index and c.exit_code != 75
                 and c.launched < (cycle.status_done or float("inf"))]
        if cycle.status and depth == 0 and not later:  # (a later cycle may have retried)
            add("exit_codes", None, f"cycle {cycle.index}: {names}, yet the status after it "
                f"shows an empty outbox")
    # and once all is done, status says nothing waits and nothing is behind
    final = result.final_status
    if final and (_outbox_of(final) != 0 or "behind:" in final):
        add("exit_codes", None, "the status after the drain shows something waiting: "
            + " / ".join(line.strip() for line in final.splitlines()
                         if "buildkite" in line or "behind" in line)[:300])


def _outbox_of(status: str) -> int | None:
    """The OUTBOX column of ``slurm-sync status``'s buildkite row, or None."""
    for line in status.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")]
        cells = [c for c in cells if c]
        if len(cells) >= 3 and cells[0] == "buildkite" and cells[2].isdigit():
            return int(cells[2])
    return None


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)


def figures_buildkite(result: Result, findings: dict[str, list[Finding]]) -> dict[str, Any]:
    """The numbers of one Buildkite run."""
    kite = _Kite(result)
    ours = [j for j in kite.jobs.values() if kite.ours(j)]
    builds = result.extra.get("builds", [])
    tasks = [(e, t) for e in kite.entries for t in e["tasks"]]
    ended = Counter(f"{t['state']}" + (f" {t['exit_code']}" if t["state"] == "FAILED" else "")
                    + (" pending" if t["state"] == "CANCELLED" and t["start"] is None else "")
                    for _, t in tasks)
    calls = Counter((c["cmd"], c.get("fault") or "") for c in result.calls
                    if c["cmd"] in ("sbatch", "scancel", "kill"))
    requests = Counter(q["status"] for q in result.requests)
    # delays: a job scheduled -> its first sbatch; a job cancelled -> its Slurm job over
    submit_delay, cancel_delay = [], []
    for job in ours:
        runs = kite.runs_of.get(job["id"], [])
        scheduled = kite.states[job["id"]][0][0] if kite.states[job["id"]] else None
        if runs and scheduled is not None:
            submit_delay.append(min(e["t"] for e, _ in runs) - scheduled)
        gone = kite.cancelled_by_user(job["id"])
        for _, task in runs:
            if gone is not None and task["end"] is not None and task["end"] >= gone:
                cancel_delay.append(task["end"] - gone)
    cancelled = [j for j in ours if kite.cancelled_by_user(j["id"]) is not None]
    return {
        "seed": result.scenario.seed,
        "service": result.service,
        "bk_jobs": len(kite.jobs),
        "bk_jobs_ours": len(ours),
        "builds": len(builds),
        "builds_cancelled": dict(Counter(b["cancel_kind"] for b in builds if b["cancel_kind"])),
        "bk_final_states": dict(Counter(j["state"] for j in ours)),
        "cancelled_before_running": sum(1 for j in cancelled if not kite.accepted(j["id"])),
        "cancelled_while_running": sum(1 for j in cancelled if kite.accepted(j["id"])),
        "submissions": len(kite.entries),
        "arrays": sum(1 for e in kite.entries if e["array_size"]),
        "slurm_jobs": len(tasks),
        "slurm_ended": dict(ended),
        "held_then_cancelled": sum(1 for _, t in tasks if t.get("held")
                                   and t["state"] == "CANCELLED"),
        "acquire_refused": sum(1 for e in kite.log if e["what"] == "acquire"
                               and e["status"] != 200),
        "sbatch_calls": sum(n for (cmd, _), n in calls.items() if cmd == "sbatch"),
        "scancel_calls": sum(n for (cmd, _), n in calls.items() if cmd == "scancel"),
        "faults": {
            **_faults(result, requests),
            "sbatch_failed": calls.get(("sbatch", "fail"), 0),
            "sbatch_lost": calls.get(("sbatch", "lost"), 0),
            "sbatch_hang": sum(n for (cmd, f), n in calls.items()
                               if cmd == "sbatch" and f.startswith("hang")),
            "sbatch_kill": sum(n for (cmd, f), n in calls.items()
                               if cmd == "sbatch" and f.startswith("kill")),
            "scancel_failed": calls.get(("scancel", "fail"), 0),
        },
        "submit_delay_p50": _percentile(submit_delay, 0.5),
        "submit_delay_max": _percentile(submit_delay, 1.0),
        "cancel_delay_p50": _percentile(cancel_delay, 0.5),
        "cancel_delay_max": _percentile(cancel_delay, 1.0),
        "kills": result.kills,
        "kills_by_sbatch": sum(1 for c in result.cycles if "sbatch:kill" in c.armed),
        "cycles": len(result.cycles),
        "exit_codes": dict(Counter(str(c.exit_code) for c in result.cycles)),
        "requests": len(result.requests),
        "requests_by_endpoint": dict(Counter(f"{q['method']} {_bk_endpoint(q['path'])}"
                                             for q in result.requests)),
        "slurm_calls": len(result.calls),
        "drained": result.drained,
        "wall_seconds": round(result.wall, 1),
        "failed": {k: len(v) for k, v in findings.items() if v},
        "passed": not any(findings.values()),
    }


def _bk_endpoint(path: str) -> str:
    """``/v2/organizations/acme/builds`` -> builds; ``.../pipelines/app/builds/12`` ->
    builds/N."""
    parts = [p for p in path.split("/") if p]
    if parts and parts[-1].isdigit():
        return f"{parts[-2]}/N"
    return parts[-1] if parts else "/"
