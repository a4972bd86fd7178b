"""What a cycle calls for in cc-backend: a pure function of Slurm's view, the store's snapshot
and what ``observe`` found (no I/O, no clock, no logging).

    result = plan(view, snapshot, Direction.BOTH, Scope(), Observed(cluster="fritz"), hosts)
    result.actions   # start_job and stop_job to send, starts first, each in time order
    result.facts     # what needs nothing sent: adopted runs, runs cc-backend must not get

    runs of the view ──> select (scope, started) ──> start: adopt | refuse | send | wait
                                                  └─> stop: Slurm's word that it ended

Starts: every run Slurm shows running (squeue) or that ran in the sacct window, not yet
delivered, queued or refused. A run cc-backend already lists running (reconcile) is a fact,
recorded as delivered; one with no host left after node_regex is a fact refused for good, and
so is its stop. A run only sacct shows running, or that started after the cycle began, waits
for squeue's view of its cores. Stops:
every started run Slurm says ended (sacct, or squeue for a run that ended before the window).

Each start's payload also says which earlier runs of its job slurm-sync started (``ours``) or
means to start (``waits_for``: queued in the outbox, or planned here): ``apply`` sends the runs
of a job in order and never a later one ahead of an earlier one (see ``apply``).
"""

from __future__ import annotations

from collections import defaultdict

from slurm_sync.actions import Action, RunKey
from slurm_sync.connector import Direction, Fact, Plan, Scope, Snapshot, View, delivery_key
from slurm_sync.connectors.clustercockpit.observe import Observed
from slurm_sync.connectors.clustercockpit.payload import (
    START,
    STOP,
    Unsendable,
    start_payload,
    stop_payload,
)
from slurm_sync.connectors.clustercockpit.settings import HostMap
from slurm_sync.slurm.model import Job

__all__ = ["ADOPTED", "plan"]

NAME = "clustercockpit"
#: The detail of an adopted run's start fact (cc-backend lists it running: reconcile).
ADOPTED = "cc-backend lists it running (reconcile)"


def plan(view: View, snapshot: Snapshot, direction: Direction, scope: Scope,
         observed: Observed, hosts: HostMap) -> Plan:
    """The starts and stops this cycle calls for, and the facts to record."""
    runs: dict[str, Job] = {}
    ends: dict[str, Job] = {}
    # squeue first: while a job runs it knows the cores and GPUs; sacct fills in the rest.
    for job in (*view.active, *view.ended, *observed.looked_up):
        if job.start_time and scope.covers(job):
            runs.setdefault(delivery_key(job), job)
    # sacct is asked after squeue, so its word that a run ended wins for the stop; a run
    # squeue still holds as ended (MinJobAge) but that ended before the window has only
    # squeue's word, and is stopped on it, or its record would stay running for ever.
    for job in (*view.ended, *observed.looked_up, *view.active):
        if job.start_time and job.end_time and job.state.finished and scope.covers(job):
            ends.setdefault(delivery_key(job), job)
    remote = {(r.job_id, r.start_time) for r in (observed.remote or ())}
    starts: list[Action] = []
    stops: list[Action] = []
    facts: list[Fact] = []
    started = set(snapshot.delivered.get(START, frozenset()))
    refused: set[str] = set()
    for key, job in runs.items():
        in_cc = (job.job_id, job.start_time) in remote
        if direction.includes(Direction.START) and not snapshot.done(START, key):
            if in_cc:
                facts.append(Fact(START, key, ADOPTED))
                started.add(key)
            elif not job.hosts:
                continue  # never ran anywhere (cancelled while pending)
            elif not job.live and (job.state.active or not view.squeue_ok
                                              or (job.start_time or 0) >= int(view.now)):
                # Only squeue knows a running job's cores and GPUs: a run sacct alone shows
                # (squeue failed, or it started after the cycle began: after squeue was asked,
                # and perhaps ended too) waits for the next cycle's squeue, which lists it
                # for MinJobAge, rather than being sent without its allocation for good.
                continue
            else:
                try:
                    starts.append(_start(key, job, observed, hosts))
                except Unsendable as exc:
                    facts.append(Fact(START, key, f"not sent: {exc}", refused=True))
                    refused.add(key)
                started.add(key)
        end = ends.get(key)
        if (end is not None and direction.includes(Direction.STOP)
                and (key in started or in_cc) and not snapshot.done(STOP, key)):
            if key in refused:
                facts.append(Fact(STOP, key, "not sent: its start was refused", refused=True))
                continue
            stops.append(Action(
                NAME, STOP, key,
                stop_payload(end, cluster=observed.cluster or end.cluster or "",
                             api_version=observed.api_version),
                f"ended {end.state.value.lower()}"))
    starts = _with_earlier_runs(starts, snapshot)
    starts.sort(key=lambda a: (a.payload.get("startTime") or 0, a.key))
    stops.sort(key=lambda a: (a.payload.get("stopTime") or 0, a.key))
    return Plan(actions=(*starts, *stops), facts=tuple(facts))


def _start(key: str, job: Job, observed: Observed, hosts: HostMap) -> Action:
    payload, _ = start_payload(job, cluster=observed.cluster or job.cluster or "",
                               api_version=observed.api_version, mapping=hosts)
    files = {"job_id": job.job_id, "array_job_id": job.array_job_id}
    return Action(NAME, START, key, {"job": payload, "files": files},
                  "running" if job.state.active else f"ran and ended "
                  f"{job.state.value.lower()} between cycles")


def _with_earlier_runs(starts: list[Action], snapshot: Snapshot) -> list[Action]:
    """Each start with the earlier runs of its job that slurm-sync started (``ours``) and
    those it means to start and has not yet (``waits_for``: in the outbox, or planned here),
    by start time."""
    delivered = snapshot.delivered.get(START, frozenset())
    by_job: dict[tuple[str, int], dict[int, bool]] = defaultdict(dict)  # start: delivered?
    for key in (*snapshot.queued.get(START, frozenset()), *(a.key for a in starts)):
        parts = RunKey.parse(key)
        if parts is not None and key not in delivered:
            by_job[parts.job][parts.start] = False
    for key in delivered:
        parts = RunKey.parse(key)
        if parts is not None:
            by_job[parts.job][parts.start] = True
    out = []
    for action in starts:
        parts = RunKey.parse(action.key)
        runs = by_job.get(parts.job, {}) if parts is not None else {}
        earlier = sorted(t for t in runs if parts is not None and t < parts.start)
        out.append(Action(action.connector, action.kind, action.key, {
            **action.payload,
            "ours": [t for t in earlier if runs[t]],
            "waits_for": [t for t in earlier if not runs[t]],
        }, action.reason))
    return out
