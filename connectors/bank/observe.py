"""What the Bank reads before it plans: the allocation service's answers, NSS's uids and, in
mode native, Slurm's QOS side. Read only (it runs under ``--dry-run`` too); what the answers
mean is ``plan``'s word.

    observed = observe(settings, view, snapshot, service, qos_admin, concurrency=4)

- **uids**: one NSS lookup (``pwd.getpwnam``) per distinct user per cycle, for the owners
  that Slurm gave no uid (sacct's JSON has none) and, in mode native, the accounts' users;
- **checks** (modes ``report`` and ``hold``): for every pending job not approved yet (or held
  by the bank), ``GET /can_submit_job/{cost}/{uid}/{account}/`` where cost is its estimate
  plus the estimates of the account's jobs already approved and still pending, so jobs cannot
  overdraw together (running jobs are in the service's usage already, reported at start);
- **accounts** (mode ``native``): each account's association, its QOS's usage and limit, and
  its balance (``AllocationService.balance``), accounts in parallel.

A service that does not answer, Slurm that cannot be read, an account with no users: logged
here, and left out of what ``plan`` gets.
"""

from __future__ import annotations

import logging
import pwd
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Optional

from slurm_sync.connector import Snapshot, View, delivery_key
from slurm_sync.connectors.bank.cost import estimate
from slurm_sync.connectors.bank.model import (
    APPROVE,
    DENY,
    START,
    STOP,
    AccountBalance,
    Check,
    Observed,
    check_key,
    uid_of,
)
from slurm_sync.connectors.bank.plan import held_by_us, judge
from slurm_sync.connectors.bank.qos import AccountQos, QosAdmin, QosUsage
from slurm_sync.connectors.bank.service import AllocationService, Unanswered
from slurm_sync.connectors.bank.settings import BankSettings
from slurm_sync.errors import SlurmError
from slurm_sync.slurm.model import JobState

__all__ = ["look_up_uids", "observe"]

log = logging.getLogger(__name__)
_FIELDS = {"connector": "bank"}


def look_up_uids(users: Iterable[str]) -> dict[str, int | None]:
    """Each user's uid from NSS (None: no such user), one lookup per distinct name."""
    found: dict[str, int | None] = {}
    for user in sorted(set(users)):
        try:
            found[user] = pwd.getpwnam(user).pw_uid
        except KeyError:
            found[user] = None
    return found


def observe(settings: BankSettings, view: View, snapshot: Snapshot, service: AllocationService,
            qos_admin: QosAdmin | None, concurrency: int = 4) -> Observed:
    """What the service, NSS and Slurm say this cycle (see the module's docstring)."""
    users = _owners_without_uid(settings, view, snapshot)
    if settings.mode == "native":
        found = _native_side(settings, view, qos_admin)
        for _, assoc, _ in found.values():
            users |= set(assoc.users)
        uids = look_up_uids(users)
        return Observed(uids=uids, accounts=_balances(settings, found, service, uids,
                                                      concurrency))
    uids = look_up_uids(users)
    return Observed(uids=uids, checks=_checks(settings, view, snapshot, service, uids))


def _owners_without_uid(settings: BankSettings, view: View, snapshot: Snapshot) -> set[str]:
    """The users ``plan`` may need a uid of: owners of the bank's jobs whose uid Slurm did not
    give, among pending jobs and runs whose start or end is not recorded yet."""
    users = set()
    for job in (*view.active, *view.ended):
        if job.uid is not None or not job.user or not settings.manages(job.account):
            continue
        key = delivery_key(job)
        if not (snapshot.done(START, key) and snapshot.done(STOP, key)):
            users.add(job.user)
    return users


def _checks(settings: BankSettings, view: View, snapshot: Snapshot, service: AllocationService,
            uids: Mapping[str, int | None]) -> dict[str, Check]:
    """The service's answer for each pending job not approved yet (or held by the bank), in
    submit order; each question counts the account's jobs approved before it."""
    approved = snapshot.delivered.get(APPROVE, frozenset())
    pending = [j for j in view.active
               if j.state is JobState.PENDING and settings.manages(j.account)]
    committed: dict[str, Decimal] = defaultdict(Decimal)
    for job in pending:
        guess = estimate(job, settings.prices)
        if check_key(job) in approved and isinstance(guess, Decimal):
            committed[job.account or ""] += guess
    checks: dict[str, Check] = {}
    for job in sorted(pending, key=lambda j: (j.submit_time or 0, j.job_id)):
        key = check_key(job)
        if key in approved and not held_by_us(job, snapshot):
            continue
        guess = estimate(job, settings.prices)
        uid = uid_of(job, uids)
        check = Check()
        if isinstance(guess, Decimal) and guess > 0 and uid is not None:
            total = guess + committed.get(job.account or "", Decimal(0))
            check = Check(total, service.can_pay(total, uid, job.account or ""))
        checks[key] = check
        verdict = judge(job, guess, uid, check, settings.fail_open)
        if verdict.unanswered:
            said = "approved (fail_open)" if settings.fail_open else "refused (fail_closed)"
            log.warning("allocation service not answering: %s", said,
                        extra={"fields": {**_FIELDS, "error": verdict.unanswered}})
        if verdict.ok:
            committed[job.account or ""] += verdict.estimate
        elif settings.mode == "report" and not snapshot.done(DENY, key):
            log.warning("would hold (mode report)", extra={"fields": {
                **_FIELDS, "job": job.display_id, "why": verdict.reason}})
    return checks


#: mode native, per account: its QOS's name, its association, the QOS's usage (None: no QOS)
_Side = Mapping[str, tuple[str, AccountQos, Optional[QosUsage]]]


def _native_side(settings: BankSettings, view: View, qos_admin: QosAdmin | None) -> _Side:
    """Slurm's view of each account's QOS: its name, the association, the QOS's usage."""
    if not view.slurm_ok:
        log.warning("Slurm could not be read this cycle: QOS limits left as they are",
                    extra={"fields": _FIELDS})
        return {}
    if qos_admin is None:
        return {}
    names = {a: settings.native.qos_of(a) for a in sorted(settings.accounts)}
    try:
        enforcement = qos_admin.enforcement()
        assocs = qos_admin.accounts(names)
        usage = qos_admin.usage(names.values())
    except (SlurmError, ValueError) as exc:
        log.warning("QOS limits left as they are: %s", exc, extra={"fields": _FIELDS})
        return {}
    for problem in enforcement.problems():
        log.warning("mode native: %s", problem, extra={"fields": _FIELDS})
    found = {}
    for account, qos in names.items():
        assoc = assocs.get(account)
        if assoc is None or not assoc.users:
            log.warning("account %s has no users in Slurm: no QOS limit written", account,
                        extra={"fields": _FIELDS})
            continue
        found[account] = (qos, assoc, usage.get(qos))
    return found


def _balances(settings: BankSettings, found: _Side, service: AllocationService,
              uids: Mapping[str, int | None], concurrency: int) -> tuple[AccountBalance, ...]:
    """Each account's balance, accounts in parallel (a balance is a few requests per user),
    each one in order; an account whose balance is unknown is left out, and logged."""
    with ThreadPoolExecutor(max_workers=max(concurrency, 1)) as pool:
        balances = dict(zip(found, pool.map(
            lambda a: _balance(settings, service, a, found[a][1].users, found[a][2], uids),
            found)))
    out = []
    for account, (qos, assoc, usage) in found.items():
        balance = balances[account]
        if isinstance(balance, str):
            log.warning("balance of account %s unknown, its QOS limit left as it is: %s",
                        account, balance, extra={"fields": _FIELDS})
            continue
        out.append(AccountBalance(account, qos, assoc, usage, balance))
    return tuple(out)


def _balance(settings: BankSettings, service: AllocationService, account: str,
             users: Sequence[str], current: QosUsage | None,
             uids: Mapping[str, int | None]) -> Decimal | str | None:
    """What the account can still spend: the most any of its users can (the service caps
    users within an account too), from the limit Slurm holds as a first guess; None: no
    limit; a string: why it is unknown."""
    native = settings.native
    hint = None
    if current is not None:
        left = current.limit.get(native.tres)
        if left is not None:
            hint = native.su(left - current.used.get(native.tres, 0)
                             - current.running.get(native.tres, 0))
    best: Decimal | None = Decimal("0.00")
    asked = 0
    for user in users:
        uid = uids.get(user)
        if uid is None:
            continue
        asked += 1
        try:
            found = service.balance(account, uid, hint, native.resolution)
        except Unanswered as exc:
            return str(exc)
        if found is None:
            return None
        best = max(best or Decimal(0), found)
    if not asked:
        return f"none of its users ({', '.join(users)}) has a uid here"
    return best
