"""The Bank's plan, pure: a function of the cycle's view, the store's snapshot, the settings
and what ``observe`` read (``Observed``). No I/O, no clock, no logging.

    result = plan(settings, view, snapshot, Direction.BOTH, Scope(), observed)
    result.actions    # limit, release, hold, start, stop
    result.facts      # approve, deny (mode report), and reports refused for good

    limits (mode native) ──> checks (pending jobs) ──> starts ──> ends (oldest run first)

- **checks**: each pending job ``observe`` asked about is judged (``judge``): approved (a
  fact; a job the bank held is also released), held (mode ``hold``), or said to be one that
  would be held (mode ``report``: a ``deny`` fact, once per submission);
- **starts**: each run not reported yet, charged its estimate (``POST /jobs/``);
- **ends**: each ended run, its actual amount (``PUT /jobs/{id}/``); a requeued job's later
  run is added to its earlier runs' charge on the job's one record, and goes after them;
- a run whose owner has no uid, or whose cost cannot be told, is a fact refused for good.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from slurm_sync.actions import Action, RunKey
from slurm_sync.connector import Direction, Fact, Plan, Scope, Snapshot, View, delivery_key
from slurm_sync.connectors.bank.cost import actual_cost, estimate
from slurm_sync.connectors.bank.limits import Limit, unsettled_su
from slurm_sync.connectors.bank.model import (
    APPROVE,
    DENY,
    HOLD,
    HOLD_MARK,
    RELEASE,
    START,
    STOP,
    Check,
    Observed,
    check_key,
    uid_of,
)
from slurm_sync.connectors.bank.service import job_record
from slurm_sync.connectors.bank.settings import BankSettings
from slurm_sync.slurm.model import Job

__all__ = ["Verdict", "held_by_us", "judge", "plan"]

NAME = "bank"


@dataclass(frozen=True)
class Verdict:
    """What the bank makes of one pending job: ``ok`` (approve) or not, and why.
    ``unanswered`` says what kept the service from answering (fail_open / fail_closed)."""

    ok: bool
    reason: str
    estimate: Decimal = Decimal(0)
    unanswered: str = ""


def judge(job: Job, guess: Decimal | str, uid: int | None, check: Check,
          fail_open: bool) -> Verdict:
    """The verdict on a pending job from its estimate (or why it has none), its owner's uid
    and what the service answered (``check``)."""
    if isinstance(guess, str):
        return Verdict(False, guess)
    if guess == 0:
        return Verdict(True, "costs nothing", guess)
    answer = check.answer
    if uid is None or answer is None or check.total is None:
        return _unanswered(f"no uid for user {job.user}", guess, fail_open)
    total = check.total
    if answer.ok:
        return Verdict(True, f"{guess} SU approved", guess)
    if answer.refused:
        return Verdict(False, f"the service refuses the request: {answer.message}", guess)
    if answer.ok is False:
        others = f" (with {total - guess} SU pending)" if total > guess else ""
        said = f": {answer.message}" if answer.message else ""
        return Verdict(False, f"account {job.account} cannot pay {guess} SU{others}{said}",
                       guess)
    return _unanswered(answer.message, guess, fail_open)


def _unanswered(why: str, guess: Decimal, fail_open: bool) -> Verdict:
    verdict = "approved (fail_open)" if fail_open else "refused (fail_closed)"
    return Verdict(fail_open, f"service unreachable, {verdict}: {why}", guess, unanswered=why)


def held_by_us(job: Job, snapshot: Snapshot) -> bool:
    """Whether the bank holds ``job`` (its hold delivered, no release since)."""
    key = check_key(job)
    return (key in snapshot.delivered.get(HOLD, frozenset())
            and key not in snapshot.delivered.get(RELEASE, frozenset()))


def plan(settings: BankSettings, view: View, snapshot: Snapshot, direction: Direction,
         scope: Scope, observed: Observed) -> Plan:
    """The actions and facts of one cycle (see the module's docstring)."""
    actions: list[Action] = []
    facts: list[Fact] = []
    if direction.includes(Direction.START) and not scope.job_ids:
        actions += _plan_limits(settings, view, snapshot, observed)
    if direction.includes(Direction.START):
        _plan_checks(settings, view, snapshot, scope, observed, actions, facts)
        _plan_starts(settings, view, snapshot, scope, observed, actions, facts)
    if direction.includes(Direction.STOP):
        _plan_ends(settings, view, snapshot, scope, observed, actions, facts)
    return Plan(tuple(actions), tuple(facts))


def _plan_limits(settings: BankSettings, view: View, snapshot: Snapshot,
                 observed: Observed) -> list[Action]:
    if settings.mode != "native" or not observed.accounts:
        return []
    unsettled = unsettled_su(view, snapshot, settings.prices)
    limits = (Limit.of(a.account, a.qos, settings.native, a.balance,
                       unsettled.get(a.account, Decimal(0)), a.usage, a.assoc)
              for a in observed.accounts)
    return [limit.action() for limit in limits if limit.needs_write]


def _plan_checks(settings: BankSettings, view: View, snapshot: Snapshot, scope: Scope,
                 observed: Observed, actions: list[Action], facts: list[Fact]) -> None:
    for job in view.active:
        key = check_key(job)
        check = observed.checks.get(key)
        if check is None or not scope.covers(job):
            continue
        verdict = judge(job, estimate(job, settings.prices), uid_of(job, observed.uids), check,
                        settings.fail_open)
        held = held_by_us(job, snapshot)
        if verdict.ok:
            facts.append(Fact(APPROVE, key, verdict.reason))
            if held:
                actions.append(Action(NAME, RELEASE, key, {"job_id": job.job_id},
                                      "funds allow it now"))
        elif settings.mode == "hold" and not held:
            actions.append(Action(NAME, HOLD, key, {
                "job_id": job.job_id, "comment": f"{HOLD_MARK} {verdict.reason}"},
                verdict.reason))
        elif settings.mode == "report" and not snapshot.done(DENY, key):
            facts.append(Fact(DENY, key, f"would hold (mode report): {verdict.reason}"))


def _runs(settings: BankSettings, view: View, scope: Scope) -> dict[str, Job]:
    runs: dict[str, Job] = {}
    for job in (*view.active, *view.ended):
        if job.start_time and job.hosts and scope.covers(job) and settings.manages(job.account):
            runs.setdefault(delivery_key(job), job)
    return runs


def _plan_starts(settings: BankSettings, view: View, snapshot: Snapshot, scope: Scope,
                 observed: Observed, actions: list[Action], facts: list[Fact]) -> None:
    for key, job in _runs(settings, view, scope).items():
        if snapshot.done(START, key):
            continue
        uid = uid_of(job, observed.uids)
        if uid is None:
            facts.append(Fact(START, key, f"not reported: no uid for user {job.user}",
                              refused=True))
            continue
        guess = estimate(job, settings.prices)
        # A run without an estimate (no time limit) is still reported, at 0: its end
        # carries the actual amount, and the service moves usage by the difference.
        amount = guess if isinstance(guess, Decimal) else Decimal("0.00")
        why = (f"estimate {amount} SU" if isinstance(guess, Decimal)
               else f"0 SU for now: {guess}")
        actions.append(Action(NAME, START, key,
                              {"record": job_record(job, amount, uid, ended=False)},
                              f"started; {why}"))


def _plan_ends(settings: BankSettings, view: View, snapshot: Snapshot, scope: Scope,
               observed: Observed, actions: list[Action], facts: list[Fact]) -> None:
    """The end of each ended run, one run per job at a time and oldest first: the service
    keeps one record per job id, so a requeued job's later run is added to what its earlier
    runs were charged, and must not go before them (or together with them)."""
    ended: dict[tuple[str, int], dict[str, Job]] = defaultdict(dict)
    for job in view.ended:
        if (job.source == "sacct" and job.state.finished and job.start_time and job.hosts
                and scope.covers(job) and settings.manages(job.account)):
            parts = RunKey.parse(delivery_key(job))
            if parts is not None:
                ended[parts.job].setdefault(delivery_key(job), job)
    waiting = _runs_by_job(snapshot.queued.get(STOP, frozenset())
                           - snapshot.delivered.get(STOP, frozenset()))
    known = _runs_by_job((*snapshot.delivered.get(START, frozenset()),
                          *snapshot.delivered.get(STOP, frozenset())))
    for job in (*view.active, *view.ended):
        if job.start_time:
            known[(job.cluster or "-", job.job_id)].add(job.start_time)
    for job_key, runs in ended.items():
        for key, job in sorted(runs.items(), key=lambda kv: kv[1].start_time or 0):
            if snapshot.done(STOP, key):
                continue
            start = job.start_time or 0
            if any(s < start for s in waiting.get(job_key, ())):
                break  # an earlier run's end waits in the outbox: this one goes after it
            later = job.restart_count > 0 or any(s < start for s in known.get(job_key, ()))
            _end(settings, key, job, uid_of(job, observed.uids), later, actions, facts)
            break  # the next run of this job goes once this one is delivered


def _end(settings: BankSettings, key: str, job: Job, uid: int | None, later: bool,
         actions: list[Action], facts: list[Fact]) -> None:
    amount = actual_cost(job, settings.prices)
    if uid is None or isinstance(amount, str):
        why = f"no uid for user {job.user}" if uid is None else str(amount)
        facts.append(Fact(STOP, key, f"not reported: {why}", refused=True))
        return
    payload: dict[str, Any] = {"record": job_record(job, amount, uid, ended=True)}
    if later:
        payload["adds_to_earlier_runs"] = True
    actions.append(Action(NAME, STOP, key, payload, f"ended {job.state.value.lower()}; "
                          f"{amount} SU" + (" added to the job's earlier runs" if later else "")))


def _runs_by_job(keys: Iterable[str]) -> dict[tuple[str, int], set[int]]:
    """The start times of the runs in ``keys``, per job (cluster, job id)."""
    runs: dict[tuple[str, int], set[int]] = defaultdict(set)
    for key in keys:
        parts = RunKey.parse(key)
        if parts is not None:
            runs[parts.job].add(parts.start)
    return runs
