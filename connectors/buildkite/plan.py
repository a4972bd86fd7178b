"""What a cycle calls for in Buildkite and Slurm: a pure function of Slurm's view, the store's
snapshot, the settings and what ``observe`` read (no I/O, no clock, no logging).

    result = plan(view, snapshot, Direction.BOTH, Scope(), observed, settings)
    result.actions   # prune, signal, cancel, submit, notify, finish
    result.facts     # submits refused for good (a forbidden option, too many submits)

    squeue failed ──> nothing
    gone build paths ──> prune
    Buildkite unread ──> nothing more
    our Slurm jobs ──> cancel or SIGTERM on Buildkite's word (pending: cancel; running:
                       SIGTERM, cancel after cancel_grace_seconds, again after
                       cancel_resend_seconds)
    scheduled jobs ──> submit (policy-checked, by priority, within max_in_flight and
                       pipeline_limits, at most max_submits times), or a refusal fact (and,
                       in mode stacks, ``finish`` so Buildkite fails the job with the reason)
    pending jobs (stacks) ──> a timeline note of why Slurm holds them

Nothing is cancelled on a guess: a cancel needs Buildkite's word for that job (a complete
answer), and a squeue that got through. Each submit's payload says when it was planned and
which Slurm jobs of that Buildkite job had already ended (``planned_at``, ``earlier``): a
submit sent again from the outbox looks for the job its lost sbatch may have made among the
Slurm jobs since, not among those (``submit``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from slurm_sync.actions import Action
from slurm_sync.connector import Direction, Fact, Plan, Scope, Snapshot, View
from slurm_sync.connectors.buildkite.model import (
    BUILD_FINISHED,
    CANCEL,
    ENDED,
    FINISH,
    GONE,
    NAME,
    NOTIFY,
    REFUSED_ACQUIRE,
    SIGNAL,
    SUBMIT,
    TAKEN,
    BKJob,
    Observed,
    SlurmRun,
    runs_of,
)
from slurm_sync.connectors.buildkite.policy import Refused, resolve
from slurm_sync.connectors.buildkite.prune import plan_prunes
from slurm_sync.connectors.buildkite.settings import Settings
from slurm_sync.slurm.model import JobState

__all__ = ["attempts", "cancel_key", "plan", "why_cancel"]


def plan(view: View, snapshot: Snapshot, direction: Direction, scope: Scope,
         observed: Observed, settings: Settings) -> Plan:
    """The actions this cycle calls for, and the facts to record (see the module)."""
    if not view.squeue_ok:
        return Plan()  # what runs is unknown: nothing is submitted, cancelled or pruned
    actions: list[Action] = []
    facts: list[Fact] = []
    if direction.includes(Direction.STOP) and not scope.job_ids:
        actions += plan_prunes(observed.gone_paths, settings.agent.build_root, snapshot,
                               observed.cluster)
    if not observed.remote.complete:
        return Plan(actions=tuple(actions))  # without Buildkite, nothing to submit or cancel
    runs = runs_of(view.active, observed.batches, settings.job_name)
    ended = runs_of(view.ended, observed.batches, settings.job_name)
    if direction.includes(Direction.STOP):
        actions += _cancels(runs, observed, snapshot, view.now, settings)
    if direction.includes(Direction.START):
        _submits(runs, ended, observed, snapshot, scope, view.now, settings, actions, facts)
        if settings.mode == "stacks":
            actions += _notices(runs, snapshot)
    return Plan(actions=tuple(actions), facts=tuple(facts))


def cancel_key(run: SlurmRun, cluster: str | None) -> str:
    """``cluster/slurm_id/buildkite job``: a cancel or SIGTERM of that Slurm job or task."""
    return f"{cluster or run.job.cluster or '-'}/{run.slurm_id}/{run.ref.job}"


def _cancels(runs: Sequence[SlurmRun], observed: Observed, snapshot: Snapshot, now: float,
             settings: Settings) -> list[Action]:
    actions = []
    for run in runs:
        bk = observed.remote.known.get(run.ref.job)
        if bk is None:
            continue  # no word from Buildkite on this job: leave it
        pending = run.job.state is JobState.PENDING
        why = why_cancel(run, bk, pending, now, settings.taken_grace_seconds,
                         observed.taken_elsewhere)
        if why is None:
            continue
        key = cancel_key(run, observed.cluster)
        payload = {"slurm_id": run.slurm_id, "ref": run.ref.text()}
        if pending:
            if _cancel_due(snapshot, key, now, settings.cancel_resend_seconds):
                actions.append(Action(NAME, CANCEL, key, payload, f"pending; {why}"))
            continue
        signalled = snapshot.since(SIGNAL, key)
        if signalled is None and not snapshot.done(SIGNAL, key):
            actions.append(Action(NAME, SIGNAL, key, payload,
                                  f"{why}: SIGTERM so the agent's hooks run"))
        elif (signalled is not None and now - signalled >= settings.cancel_grace_seconds
                and _cancel_due(snapshot, key, now, settings.cancel_resend_seconds)):
            actions.append(Action(NAME, CANCEL, key, payload,
                                  f"{why}; still running {now - signalled:.0f} s after SIGTERM"))
    return actions


def why_cancel(run: SlurmRun, bk: BKJob, pending: bool, now: float, taken_grace: float,
               taken_elsewhere: frozenset[str]) -> str | None:
    """Why the Slurm job of ``run`` is to be stopped, from its Buildkite job's state (every
    documented one is in one of GONE, ENDED, TAKEN and WAITING); None to leave it. A
    pending job whose Buildkite job is held goes only once a squeue made after Buildkite
    was read still shows it pending (``taken_elsewhere``): else the holder may be its own
    agent, started since the cycle's squeue."""
    if bk.state in GONE:
        return f"Buildkite job {bk.state}"
    if bk.build_state in BUILD_FINISHED:
        return f"build {bk.build_state}"
    if pending and bk.state in ENDED:
        return f"Buildkite job {bk.state}; its agent could not acquire it"
    if pending and bk.state in TAKEN:
        waited = now - (run.job.submit_time or now)
        if waited >= taken_grace and run.slurm_id in taken_elsewhere:
            return f"Buildkite job {bk.state} by another agent"
    return None  # WAITING, TAKEN by our own agent, ENDED while running, or unknown


def _cancel_due(snapshot: Snapshot, key: str, now: float, resend: float) -> bool:
    """A full cancel is sent once, then Slurm is left to end the job (a job shutting down
    stays in squeue for a while: COMPLETING, KillWait). It is sent again only when the
    job is still there ``resend`` seconds later; never while one waits in the outbox."""
    sent = snapshot.since(CANCEL, key)
    if sent is None:
        return not snapshot.done(CANCEL, key)
    return now - sent >= resend


def _submits(runs: Sequence[SlurmRun], ended: Sequence[SlurmRun], observed: Observed,
             snapshot: Snapshot, scope: Scope, now: float, settings: Settings,
             actions: list[Action], facts: list[Fact]) -> None:
    remote = observed.remote
    if remote.paused:
        return
    in_slurm = {r.ref.job for r in runs}
    refused_acquire = {r.ref.job for r in ended
                       if r.job.exit_code.return_code == REFUSED_ACQUIRE}
    earlier: dict[str, set[str]] = defaultdict(set)
    for run in ended:
        earlier[run.ref.job].add(run.slurm_id)
    in_flight = len(runs)
    per_pipeline = Counter(r.ref.pipeline for r in runs)
    tried = attempts(snapshot)
    queued = snapshot.queued.get(SUBMIT, frozenset())
    for job in sorted(remote.scheduled, key=lambda j: (-j.priority, j.scheduled_at, j.id)):
        if job.id in in_slurm or job.id in refused_acquire:
            continue
        if scope.job_ids:
            continue  # --jobid names Slurm jobs; nothing new is submitted in such a run
        n = tried.get(job.id, 0)
        if f"{job.id}#{n}" in queued:
            continue  # its last submit waits in the outbox
        if snapshot.done(SUBMIT, f"{job.id}#refused"):
            continue  # refused once, reported once
        if n >= settings.max_submits:
            _refuse(job, f"submitted to Slurm {n} times and its agent never acquired it; not "
                         f"submitted again", settings, actions, facts)
            continue
        resolved = resolve(job.rules, settings.policy)
        if isinstance(resolved, Refused):
            _refuse(job, resolved.reason, settings, actions, facts)
            continue
        cap = settings.pipeline_limits.get(job.pipeline)
        if cap is not None and per_pipeline[job.pipeline] >= cap:
            continue  # stays scheduled for a later cycle
        if settings.max_in_flight and in_flight >= settings.max_in_flight:
            continue
        per_pipeline[job.pipeline] += 1
        in_flight += 1
        actions.append(Action(NAME, SUBMIT, f"{job.id}#{n + 1}", {
            "ref": job.ref.text(), "rules": list(job.rules), "options": list(resolved.options),
            "tags": list(resolved.tags), "planned_at": now,
            "earlier": sorted(earlier.get(job.id, ()))},
            f"scheduled in {job.pipeline} #{job.build}" + (f" (submit {n + 1})" if n else "")))


def _refuse(job: BKJob, reason: str, settings: Settings, actions: list[Action],
            facts: list[Fact]) -> None:
    """A job that is not submitted, for good: a fact (``status`` lists it with the reason)
    and, in mode stacks, ``finish`` so Buildkite fails it with the reason rather than
    leaving it scheduled."""
    key = f"{job.id}#refused"
    facts.append(Fact(SUBMIT, key, f"refused: {reason}", refused=True))
    if settings.mode == "stacks":
        actions.append(Action(NAME, FINISH, key, {"job": job.id, "reason": reason},
                              f"refused in {job.pipeline} #{job.build}"))


def _notices(runs: Sequence[SlurmRun], snapshot: Snapshot) -> list[Action]:
    actions = []
    for run in runs:
        if run.job.state is not JobState.PENDING or not run.job.reason:
            continue
        key = f"{run.ref.job}/{run.slurm_id}/{run.job.reason}"
        if not snapshot.done(NOTIFY, key):
            actions.append(Action(NAME, NOTIFY, key, {
                "job": run.ref.job,
                "detail": f"pending in Slurm as job {run.slurm_id}: {run.job.reason}"},
                "timeline"))
    return actions


def attempts(snapshot: Snapshot) -> dict[str, int]:
    """How many times each Buildkite job was submitted (keys ``<job>#<n>``)."""
    out: dict[str, int] = {}
    for keys in (snapshot.delivered.get(SUBMIT, frozenset()),
                 snapshot.failed.get(SUBMIT, frozenset()),
                 snapshot.queued.get(SUBMIT, frozenset())):
        for key in keys:
            job, _, n = key.partition("#")
            if n.isdigit():
                out[job] = max(out.get(job, 0), int(n))
    return out
