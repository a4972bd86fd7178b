"""Bank: service-unit accounting against an allocation service (the myBRC / ColdFront API of
slurm-banking-plugins), from outside Slurm.

    "connectors": {"bank": {
        "url": "https://mybrc.example.org/mybrc-rest", "token": {"file": "/etc/slurm-sync/bank"},
        "prices": {"savio": "0.75", "savio_bigmem": "1.67", "debug": "0"},
        "unpriced": "refuse", "mode": "hold", "on_unreachable": "fail_open"}}

Cost: ``price(partition) x cpus x hours``, rounded half-up to 2 decimals, as the plugins do.
Before a job starts the estimate uses its time limit, requested cpus and, for a job that may run
on several partitions, the highest of their prices; after it ends the actual cost uses its
allocated cpus and elapsed time. A partition without a price is free or refused, as
``unpriced`` says, never a silent 0.

One cycle:

    observe: for every pending job not approved yet, ``GET /can_submit_job/{cost}/{uid}/
             {account}/`` where cost is its estimate plus the estimates of the account's jobs
             already approved and still pending (so jobs cannot overdraw together; running jobs
             are in the service's usage already, reported at start)
    plan:    approve, hold (mode ``hold``: an administrator's hold and a comment the owner can
             read) or release jobs held earlier that can now be paid; report each started run
             (``POST /jobs/`` with the estimate) and each ended run (``PUT /jobs/{id}/`` with
             the actual amount, idempotent)
    apply:   the HTTP calls; holds and releases through the runner API

A service that cannot be reached is ``fail_open`` (the plugins' behaviour: approve, and say so)
or ``fail_closed`` (treat as cannot pay), logged either way. Reports wait in the outbox and the
sacct window when the service is down; ``slurm-sync bank reconcile --since DATE`` re-sends any
period from sacct.
"""

from __future__ import annotations

import datetime as dt
import logging
import pwd
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, ClassVar

from slurm_sync.actions import Action, Outcome, RunKey
from slurm_sync.commands import EXIT_FAILED, EXIT_OK, CommandContext
from slurm_sync.connector import (
    Connector,
    Direction,
    Kind,
    Scope,
    SlurmContext,
    SlurmNeeds,
    Snapshot,
    View,
    delivery_key,
)
from slurm_sync.connectors.bank_service import SERVICES, AllocationService, Unanswered, drf_error
from slurm_sync.errors import ConfigError, SlurmError
from slurm_sync.http import ServiceClient
from slurm_sync.secrets import SECRET_REF_SCHEMA
from slurm_sync.slurm.control import SlurmControl
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.qos import AccountQos, QosAdmin, QosUsage
from slurm_sync.slurm.query import JobFilter, SacctWindow

__all__ = ["BankConnector", "Prices", "actual_cost", "estimate", "job_record"]

log = logging.getLogger(__name__)

APPROVE, HOLD, RELEASE, START, STOP = "approve", "hold", "release", "start", "stop"
DENY = "deny"
LIMIT = "limit"
CENT = Decimal("0.01")
HOLD_MARK = "slurm-sync bank:"

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url", "token", "prices", "unpriced"],
    "properties": {
        "url": {"type": "string", "pattern": "^https?://"},
        "api": {"enum": sorted(SERVICES), "description": "the service's API (default mybrc)"},
        "token": SECRET_REF_SCHEMA,
        "prices": {
            "type": "object",
            "additionalProperties": {"type": ["string", "number"],
                                     "pattern": "^[0-9]+(\\.[0-9]+)?$", "minimum": 0},
            "description": "partition -> service units per CPU-hour",
        },
        "unpriced": {"enum": ["free", "refuse"],
                     "description": "what a partition without a price costs: nothing, or the "
                                    "job is refused (held in mode hold)"},
        "mode": {"enum": ["report", "hold", "native"]},
        "native": {
            "type": "object", "additionalProperties": False,
            "description": "mode native: each account's balance as GrpTRESMins on a NoDecay QOS",
            "properties": {
                "qos": {"type": "string", "pattern": "^[a-z0-9_.-]*\\{account\\}[a-z0-9_.-]*$",
                        "description": "the QOS name, with {account} (default bank_{account})"},
                "tres": {"type": "string", "pattern": "^[a-z][a-z0-9_]*(/[a-z0-9_:]+)?$",
                         "description": "the TRES the limit is on (default billing)"},
                "su_per_tres_hour": {"type": ["string", "number"],
                                     "pattern": "^[0-9]+(\\.[0-9]+)?$", "exclusiveMinimum": 0,
                                     "description": "service units one hour of that TRES "
                                                    "costs (default 1)"},
            },
        },
        "accounts": {"type": "array", "items": {"type": "string", "minLength": 1},
                     "description": "the Slurm accounts the bank manages (default: all)"},
        "on_unreachable": {"enum": ["fail_open", "fail_closed"]},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 120},
    },
}


# --- cost (pure) --------------------------------------------------------------------------------


class Prices:
    """The price table and what an unpriced partition means."""

    def __init__(self, table: Mapping[str, Any], unpriced: str) -> None:
        self.table: dict[str, Decimal] = {}
        for name, value in table.items():
            try:
                price = Decimal(str(value))
            except InvalidOperation:
                raise ConfigError(f"$.connectors.bank.prices.{name}: {value!r} is not a "
                                  f"number") from None
            if price < 0:
                raise ConfigError(f"$.connectors.bank.prices.{name}: negative price")
            self.table[name] = price
        self.unpriced = unpriced

    def of(self, partitions: str | None) -> Decimal | None:
        """The price of a job that may run on ``partitions`` (``a,b``: the highest); None when
        one of them has no price and unpriced partitions are refused."""
        prices = []
        for name in (partitions or "").split(","):
            name = name.strip()
            if not name:
                continue
            if name in self.table:
                prices.append(self.table[name])
            elif self.unpriced == "refuse":
                return None
            else:
                prices.append(Decimal(0))
        return max(prices) if prices else (Decimal(0) if self.unpriced == "free" else None)


def cost(price: Decimal, cpus: int, seconds: float) -> Decimal:
    """`cost(Decimal("0.75"), 4, 5400)` is 4.50: price x cpus x hours, half-up to cents."""
    hours = Decimal(str(max(seconds, 0))) / Decimal(3600)
    return (price * cpus * hours).quantize(CENT, rounding=ROUND_HALF_UP)


def estimate(job: Job, prices: Prices) -> Decimal | str:
    """What a job may cost before it starts (time limit x requested cpus), or why it cannot be
    estimated."""
    price = prices.of(job.partition)
    if price is None:
        return f"partition {job.partition} has no price"
    if job.time_limit is None:
        return "no time limit: the cost cannot be bounded"
    cpus = job.tres_requested.get("cpu") or job.cpus or 0
    return cost(price, int(cpus), job.time_limit * 60)


def actual_cost(job: Job, prices: Prices) -> Decimal | str:
    """What an ended run cost: allocated cpus x elapsed time, at its partition's price."""
    price = prices.of(job.partition)
    if price is None:
        return f"partition {job.partition} has no price"
    if not job.start_time or not job.end_time:
        return "no start or end time"
    cpus = job.tres_allocated.get("cpu") or job.cpus or 0
    return cost(price, int(cpus), job.end_time - job.start_time)


def _iso(epoch: int | None) -> str | None:
    if not epoch:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def uid_of(job: Job) -> int | None:
    """The job owner's uid: squeue gives it; sacct's JSON does not, so the name is looked up."""
    if job.uid is not None:
        return job.uid
    return uid_of_user(job.user)


def uid_of_user(user: str | None) -> int | None:
    if not user:
        return None
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def job_record(job: Job, amount: Decimal, uid: int, *, ended: bool) -> dict[str, Any]:
    """The myBRC job record of one run (start: the estimate; end: the actual amount)."""
    record: dict[str, Any] = {
        "jobslurmid": str(job.job_id), "userid": str(uid), "accountid": job.account or "",
        "amount": str(amount), "jobstatus": "RUNNING" if not ended else job.state.value,
        "partition": job.partition, "qos": job.qos,
        "submitdate": _iso(job.submit_time), "startdate": _iso(job.start_time),
        "nodes": [{"name": h} for h in job.hosts],
        "num_cpus": job.tres_allocated.get("cpu") or job.cpus,
        "num_alloc_nodes": job.node_count,
    }
    if ended:
        elapsed = (job.end_time or 0) - (job.start_time or 0)
        hours = round(max(elapsed, 0) / 3600, 6)
        record.update({"enddate": _iso(job.end_time), "raw_time": hours,
                       "cpu_time": round(hours * (record["num_cpus"] or 0), 6)})
    return record


@dataclass(frozen=True)
class Verdict:
    """What the allocation service said of one pending job."""

    ok: bool
    reason: str
    estimate: Decimal = Decimal(0)


def check_key(job: Job) -> str:
    """A pending job is checked once per submission: ``cluster/job_id/submit_time``."""
    return f"{job.cluster or '-'}/{job.job_id}/{job.submit_time or 0}"


# --- mode native (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class NativeSettings:
    """Mode native: the QOS name pattern, the TRES its limit is on, and what an hour of that
    TRES costs in service units."""

    qos: str = "bank_{account}"
    tres: str = "billing"
    su_per_hour: Decimal = Decimal(1)

    def qos_of(self, account: str) -> str:
        return self.qos.replace("{account}", account).lower()

    @property
    def resolution(self) -> Decimal:
        """Service units of one TRES-minute: finer than that a limit in minutes cannot say."""
        return self.su_per_hour / 60

    def minutes(self, su: Decimal) -> int:
        """Whole TRES-minutes that ``su`` service units pay for (never more)."""
        return int((max(su, Decimal(0)) * 60 / self.su_per_hour).to_integral_value(ROUND_FLOOR))

    def su(self, minutes: int) -> Decimal:
        """What ``minutes`` TRES-minutes cost in service units (none below 0)."""
        return max(Decimal(minutes) * self.su_per_hour / 60, Decimal(0))


#: a limit this close to the one Slurm holds is left alone: slurmctld shows used and running
#: minutes each rounded down, so their sum is up to two below the reservations while jobs run
#: (seen on the lab: a 2-cpu, 5-minute job showed 1 + 8); a write each cycle for that would
#: be a sacctmgr call a minute for nothing
LIMIT_SLACK_MINUTES = 2


@dataclass(frozen=True)
class Limit:
    """One account's QOS limit: what Slurm holds and what the balance says it should be."""

    account: str
    qos: str
    tres: str
    balance: Decimal | None  # None: unlimited
    minutes: int | None  # the GrpTRESMins to hold; None: no limit
    current: int | None
    exists: bool
    attached: bool
    users: tuple[str, ...]
    used: int = 0
    running: int = 0

    @classmethod
    def of(cls, account: str, qos: str, native: NativeSettings, balance: Decimal | None,
           unsettled: Decimal, usage: QosUsage | None, assoc: AccountQos) -> Limit:
        """``GrpTRESMins = used + running + what the balance pays for``: Slurm counts the
        QOS's past usage and the time limits of its running jobs against the limit, while the
        service's balance already has them taken off. ``unsettled`` is what the service has
        not been told yet (runs started or ended since the last report)."""
        used = usage.used.get(native.tres, 0) if usage else 0
        running = usage.running.get(native.tres, 0) if usage else 0
        minutes = None
        if balance is not None:
            minutes = used + running + native.minutes(balance + unsettled)
        return cls(account, qos, native.tres, balance, minutes,
                   usage.limit.get(native.tres) if usage else None, usage is not None,
                   qos in assoc.qos and assoc.default_qos == qos,
                   assoc.users_without, used, running)

    @property
    def needs_write(self) -> bool:
        if not self.exists or not self.attached or self.users:
            return True
        if (self.minutes is None) != (self.current is None):
            return True
        return (self.minutes is not None and self.current is not None
                and abs(self.minutes - self.current) > LIMIT_SLACK_MINUTES)

    def action(self) -> Action:
        shown = "no limit" if self.minutes is None else f"{self.tres}={self.minutes}"
        said = ("unlimited" if self.balance is None else f"{self.balance} SU")
        steps = []
        if not self.exists:
            steps.append(f"create QOS {self.qos} (Flags=NoDecay)")
        if not self.attached or self.users:
            steps.append(f"make it the default QOS of account {self.account}")
        steps.append(f"GrpTRESMins {self.current if self.current is not None else 'none'} -> "
                     f"{shown}")
        why = (f"account {self.account}: balance {said}; used {self.used} + running "
               f"{self.running} min; " + ", ".join(steps))
        key = f"{self.account}/{self.qos}/{self.minutes}"
        return Action("bank", LIMIT, key, {
            "account": self.account, "qos": self.qos, "tres": self.tres,
            "minutes": self.minutes, "create": not self.exists,
            "set": self.exists and self.minutes != self.current,
            "attach": not self.attached, "users": list(self.users)}, why)


def unsettled_su(view: View, snapshot: Snapshot, prices: Prices) -> dict[str, Decimal]:
    """Per account, what the service's balance will still move by once this cycle's reports
    are in: minus the estimate of a run started and not reported, plus estimate - actual of a
    run whose start was reported and whose end was not, minus the actual of a run neither
    was reported for. Slurm's usage has all of these already."""
    out: dict[str, Decimal] = defaultdict(Decimal)
    seen: set[str] = set()
    for job in view.ended:
        key = delivery_key(job)
        if (job.source != "sacct" or not job.state.finished or not job.start_time
                or not job.hosts or key in seen):
            continue
        seen.add(key)
        if snapshot.done(STOP, key):
            continue
        actual = actual_cost(job, prices)
        if isinstance(actual, str):
            continue
        guess = estimate(job, prices)
        if snapshot.done(START, key) and isinstance(guess, Decimal):
            out[job.account or ""] += guess - actual
        else:
            out[job.account or ""] -= actual
    for job in view.active:
        key = delivery_key(job)
        if not job.start_time or not job.hosts or key in seen or snapshot.done(START, key):
            continue
        seen.add(key)
        guess = estimate(job, prices)
        if isinstance(guess, Decimal):
            out[job.account or ""] -= guess
    return dict(out)


# --- the connector ------------------------------------------------------------------------------


class BankConnector(Connector):
    """Service units: enforce before start, report at start and end."""

    name: ClassVar[str] = "bank"
    schema: ClassVar[Mapping[str, Any]] = _SCHEMA
    kinds: ClassVar[tuple[Kind, ...]] = (
        Kind(APPROVE, Direction.START),
        Kind(RELEASE, Direction.START, batched=True),
        Kind(LIMIT, Direction.START, batched=True),
        Kind(START, Direction.START),  # the run's start reported, charged its estimate
        Kind(HOLD, Direction.STOP, destructive=True, batched=True),
        Kind(STOP, Direction.STOP, destructive=True),  # the run's end, its actual amount
        Kind(DENY, Direction.START),  # mode report: "would hold", said once per submission
    )

    @classmethod
    def add_commands(cls, commands: Any) -> None:
        mine = commands.add_parser("bank", help="allocation bank helpers")
        sub = mine.add_subparsers(dest="bank_command", metavar="COMMAND", required=True)
        reconcile = sub.add_parser(
            "reconcile",
            help="re-send the actual cost of every job that ended in a period (sacct)")
        reconcile.add_argument("--since", required=True,
                               help="start of the period (a date/time)")
        reconcile.add_argument("--until", help="end of the period (default: now)")
        reconcile.add_argument("--dry-run", dest="bank_dry_run", action="store_true",
                               help="list what would be sent")
        reconcile.set_defaults(handler=reconcile_command)

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.prices = Prices(dict(settings["prices"]), str(settings["unpriced"]))
        self.mode = str(settings.get("mode", "report"))
        self.fail_open = settings.get("on_unreachable", "fail_open") == "fail_open"
        self.accounts = frozenset(settings.get("accounts", ()))
        token = self.secret("token").reveal()
        client = ServiceClient(str(settings["url"]),
                               headers={"Authorization": f"Token {token}"},
                               timeout=float(settings.get("timeout", 5)), retries=1,
                               error_message=drf_error)
        self.service: AllocationService = SERVICES[str(settings.get("api", "mybrc"))](client)
        self.control: SlurmControl | None = None
        self._verdicts: dict[str, Verdict] = {}
        native = dict(settings.get("native", {}))
        if self.mode == "native" and not self.accounts:
            raise ConfigError("$.connectors.bank.accounts: mode native changes the accounts' "
                              "QOS in Slurm, so it needs the list of accounts it may change")
        if native and self.mode != "native":
            raise ConfigError("$.connectors.bank.native: only read in mode native")
        self.native = NativeSettings(
            qos=str(native.get("qos", "bank_{account}")),
            tres=str(native.get("tres", "billing")),
            su_per_hour=Decimal(str(native.get("su_per_tres_hour", "1"))))
        if self.native.su_per_hour <= 0:
            raise ConfigError("$.connectors.bank.native.su_per_tres_hour: must be above 0")
        self.qos_admin: QosAdmin | None = None
        self._limits: list[Limit] = []

    def bind(self, slurm: SlurmContext) -> None:
        self.control = SlurmControl(slurm.reader.runner, slurm.reader)
        self.qos_admin = QosAdmin(slurm.reader.runner)

    def manages(self, job: Job) -> bool:
        """Whether the job's account is one the bank keeps (``accounts``; all by default)."""
        return not self.accounts or (job.account or "") in self.accounts

    def needs(self) -> SlurmNeeds:
        # Pending jobs to check, running ones to report; the window for every start and end.
        return SlurmNeeds(squeue=JobFilter(states=("PD", "R", "CG", "S")), sacct=True)

    def close(self) -> None:
        self.service.close()

    # -- observe: ask the service about pending jobs (read only)

    def observe(self, view: View, snapshot: Snapshot) -> Snapshot:
        self._verdicts = {}
        if self.mode == "native":
            self._limits = self._observe_native(view, snapshot)
            return snapshot
        approved = snapshot.delivered.get(APPROVE, frozenset())
        pending = [j for j in view.active if j.state is JobState.PENDING and self.manages(j)]
        committed: dict[str, Decimal] = defaultdict(Decimal)
        for job in pending:
            guess = estimate(job, self.prices)
            if check_key(job) in approved and isinstance(guess, Decimal):
                committed[job.account or ""] += guess
        for job in sorted(pending, key=lambda j: (j.submit_time or 0, j.job_id)):
            key = check_key(job)
            if key in approved and not self._held_by_us(job, snapshot):
                continue
            self._verdicts[key] = self._ask(job, committed)
            verdict = self._verdicts[key]
            if verdict.ok:
                committed[job.account or ""] += verdict.estimate
        return snapshot

    def _observe_native(self, view: View, snapshot: Snapshot) -> list[Limit]:
        """Each account's balance, and Slurm's view of its QOS, for ``plan`` to compare."""
        if not view.slurm_ok:
            log.warning("Slurm could not be read this cycle: QOS limits left as they are",
                        extra={"fields": {"connector": self.name}})
            return []
        if self.qos_admin is None:
            return []
        names = {a: self.native.qos_of(a) for a in sorted(self.accounts)}
        try:
            enforcement = self.qos_admin.enforcement()
            assocs = self.qos_admin.accounts(names)
            usage = self.qos_admin.usage(names.values())
        except (SlurmError, ValueError) as exc:
            log.warning("QOS limits left as they are: %s", exc,
                        extra={"fields": {"connector": self.name}})
            return []
        for problem in enforcement.problems():
            log.warning("mode native: %s", problem, extra={"fields": {"connector": self.name}})
        unsettled = unsettled_su(view, snapshot, self.prices)
        asked = {}
        for account, qos in names.items():
            assoc = assocs.get(account)
            if assoc is None or not assoc.users:
                log.warning("account %s has no users in Slurm: no QOS limit written", account,
                            extra={"fields": {"connector": self.name}})
                continue
            asked[account] = (qos, assoc)
        # accounts in parallel (a balance is a few requests per user), each one in order
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            balances = dict(zip(asked, pool.map(
                lambda a: self._balance(a, asked[a][1].users, usage.get(asked[a][0])), asked)))
        limits = []
        for account, (qos, assoc) in asked.items():
            found = balances[account]
            if isinstance(found, str):
                log.warning("balance of account %s unknown, its QOS limit left as it is: %s",
                            account, found, extra={"fields": {"connector": self.name}})
                continue
            limits.append(Limit.of(account, qos, self.native, found,
                                   unsettled.get(account, Decimal(0)), usage.get(qos), assoc))
        return limits

    def _balance(self, account: str, users: Sequence[str],
                 current: QosUsage | None) -> Decimal | str | None:
        """What the account can still spend: the most any of its users can (the service
        caps users within an account too), from the limit Slurm holds as a first guess."""
        hint = None
        if current is not None:
            left = current.limit.get(self.native.tres)
            if left is not None:
                hint = self.native.su(left - current.used.get(self.native.tres, 0)
                                      - current.running.get(self.native.tres, 0))
        best: Decimal | None = Decimal("0.00")
        asked = 0
        for user in users:
            uid = uid_of_user(user)
            if uid is None:
                continue
            asked += 1
            try:
                found = self.service.balance(account, uid, hint, self.native.resolution)
            except Unanswered as exc:
                return str(exc)
            if found is None:
                return None
            best = max(best or Decimal(0), found)
        if not asked:
            return f"none of its users ({', '.join(users)}) has a uid here"
        return best

    def _held_by_us(self, job: Job, snapshot: Snapshot) -> bool:
        key = check_key(job)
        return (key in snapshot.delivered.get(HOLD, frozenset())
                and key not in snapshot.delivered.get(RELEASE, frozenset()))

    def _ask(self, job: Job, committed: Mapping[str, Decimal]) -> Verdict:
        guess = estimate(job, self.prices)
        if isinstance(guess, str):
            return Verdict(False, guess)
        if guess == 0:
            return Verdict(True, "costs nothing", guess)
        uid = uid_of(job)
        if uid is None:
            return self._unreachable(f"no uid for user {job.user}", guess)
        total = guess + committed.get(job.account or "", Decimal(0))
        answer = self.service.can_pay(total, uid, job.account or "")
        if answer.ok:
            return Verdict(True, f"{guess} SU approved", guess)
        if answer.refused:
            return Verdict(False, f"the service refuses the request: {answer.message}", guess)
        if answer.ok is False:
            others = f" (with {total - guess} SU pending)" if total > guess else ""
            said = f": {answer.message}" if answer.message else ""
            return Verdict(False, f"account {job.account} cannot pay {guess} SU{others}{said}",
                           guess)
        return self._unreachable(answer.message, guess)

    def _unreachable(self, why: str, guess: Decimal) -> Verdict:
        verdict = "approved (fail_open)" if self.fail_open else "refused (fail_closed)"
        log.warning("allocation service not answering: %s", verdict,
                    extra={"fields": {"connector": self.name, "error": why}})
        return Verdict(self.fail_open, f"service unreachable, {verdict}: {why}", guess)

    # -- plan (pure over the view, the snapshot and the verdicts)

    def plan(
        self, view: View, snapshot: Snapshot, direction: Direction, scope: Scope,
        observed: Any = None,
    ) -> list[Action]:
        actions: list[Action] = []
        if direction.includes(Direction.START) and not scope.job_ids:
            actions += [limit.action() for limit in self._limits if limit.needs_write]
        if direction.includes(Direction.START):
            actions += self._plan_checks(view, snapshot, scope)
            actions += self._plan_starts(view, snapshot, scope)
        if direction.includes(Direction.STOP):
            actions += self._plan_ends(view, snapshot, scope)
        return actions

    def _plan_checks(self, view: View, snapshot: Snapshot, scope: Scope) -> list[Action]:
        actions = []
        for job in view.active:
            key = check_key(job)
            verdict = self._verdicts.get(key)
            if verdict is None or not scope.covers(job):
                continue
            held = self._held_by_us(job, snapshot)
            if verdict.ok:
                actions.append(Action(self.name, APPROVE, key,
                                      {"job_id": job.job_id, "estimate": str(verdict.estimate)},
                                      verdict.reason))
                if held:
                    actions.append(Action(self.name, RELEASE, key, {"job_id": job.job_id},
                                          "funds allow it now"))
            elif self.mode == "hold" and not held:
                actions.append(Action(self.name, HOLD, key, {
                    "job_id": job.job_id, "comment": f"{HOLD_MARK} {verdict.reason}"},
                    verdict.reason))
            elif self.mode == "report" and not snapshot.done(DENY, key):
                log.warning("would hold (mode report)", extra={"fields": {
                    "connector": self.name, "job": job.display_id, "why": verdict.reason}})
        return actions

    def _runs(self, view: View, scope: Scope) -> dict[str, Job]:
        runs: dict[str, Job] = {}
        for job in (*view.active, *view.ended):
            if job.start_time and job.hosts and scope.covers(job) and self.manages(job):
                runs.setdefault(delivery_key(job), job)
        return runs

    def _plan_starts(self, view: View, snapshot: Snapshot, scope: Scope) -> list[Action]:
        actions = []
        for key, job in self._runs(view, scope).items():
            if snapshot.done(START, key):
                continue
            uid = uid_of(job)
            if uid is None:
                why = f"no uid for user {job.user}"
                actions.append(Action(self.name, START, key, {"skip": why}, why))
                continue
            guess = estimate(job, self.prices)
            # A run without an estimate (no time limit) is still reported, at 0: its end
            # carries the actual amount, and the service moves usage by the difference.
            amount = guess if isinstance(guess, Decimal) else Decimal("0.00")
            why = (f"estimate {amount} SU" if isinstance(guess, Decimal)
                   else f"0 SU for now: {guess}")
            actions.append(Action(self.name, START, key,
                                  {"record": job_record(job, amount, uid, ended=False)},
                                  f"started; {why}"))
        return actions

    def _plan_ends(self, view: View, snapshot: Snapshot, scope: Scope) -> list[Action]:
        """The end of each ended run, one run per job at a time and oldest first: the service
        keeps one record per job id, so a requeued job's later run is added to what its earlier
        runs were charged, and must not go before them (or together with them)."""
        ended: dict[tuple[str, int], dict[str, Job]] = defaultdict(dict)
        for job in view.ended:
            if (job.source == "sacct" and job.state.finished and job.start_time and job.hosts
                    and scope.covers(job) and self.manages(job)):
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
        actions = []
        for job_key, runs in ended.items():
            for key, job in sorted(runs.items(), key=lambda kv: kv[1].start_time or 0):
                if snapshot.done(STOP, key):
                    continue
                start = job.start_time or 0
                if any(s < start for s in waiting.get(job_key, ())):
                    break  # an earlier run's end waits in the outbox: this one goes after it
                actions.append(self._end(key, job, later=job.restart_count > 0 or any(
                    s < start for s in known.get(job_key, ()))))
                break  # the next run of this job goes once this one is delivered
        return actions

    def _end(self, key: str, job: Job, *, later: bool) -> Action:
        uid = uid_of(job)
        amount = actual_cost(job, self.prices)
        if uid is None or isinstance(amount, str):
            why = f"no uid for user {job.user}" if uid is None else str(amount)
            return Action(self.name, STOP, key, {"skip": why}, why)
        payload: dict[str, Any] = {"record": job_record(job, amount, uid, ended=True)}
        if later:
            payload["adds_to_earlier_runs"] = True
        return Action(self.name, STOP, key, payload, f"ended {job.state.value.lower()}; "
                      f"{amount} SU" + (" added to the job's earlier runs" if later else ""))

    # -- apply

    def apply(self, action: Action) -> Outcome:
        if action.kind == APPROVE:
            return Outcome.done(action, action.reason)
        if "skip" in action.payload:
            return Outcome.permanent(action, f"not reported: {action.payload['skip']}")
        if action.kind == START:
            return self.service.report_start(action, action.payload["record"])
        if action.kind == STOP and action.payload.get("adds_to_earlier_runs"):
            return self.service.report_later_end(action, action.payload["record"])
        if action.kind == STOP:
            return self.service.report_end(action, action.payload["record"])
        return self.apply_many([action])[0]

    def apply_many(self, actions: Sequence[Action]) -> list[Outcome]:
        if self.control is None:
            return [Outcome.transient(a, "not bound to Slurm") for a in actions]
        kinds = {a.kind for a in actions}
        if kinds == {LIMIT}:
            return [self._write_limit(a) for a in actions]
        if kinds - {HOLD, RELEASE}:
            return [self.apply(a) for a in actions]
        outcomes: dict[str, Outcome] = {}
        for kind in (HOLD, RELEASE):
            group = [a for a in actions if a.kind == kind]
            if not group:
                continue
            try:
                if kind == HOLD:
                    for action in group:  # each its own comment
                        self.control.hold([int(action.payload["job_id"])],
                                          comment=str(action.payload["comment"]))
                        outcomes[action.key] = Outcome.done(action, "held")
                else:
                    self.control.release([int(a.payload["job_id"]) for a in group])
                    outcomes.update({a.key: Outcome.done(a, "released") for a in group})
            except (SlurmError, ValueError) as exc:
                for action in group:
                    outcomes.setdefault(action.key, Outcome.transient(action, f"scontrol: {exc}"))
        return [outcomes[a.key] for a in actions]

    def _write_limit(self, action: Action) -> Outcome:
        """Create the QOS, make it the account's default, set its limit: what is needed."""
        if self.qos_admin is None:
            return Outcome.skipped(action, "not bound to Slurm")
        p = action.payload
        minutes = None if p["minutes"] is None else int(p["minutes"])
        try:
            if p["create"]:
                self.qos_admin.create(p["qos"], p["tres"], minutes)
            elif p["set"]:
                self.qos_admin.set_limit(p["qos"], p["tres"], minutes)
            if p["attach"] or p["users"]:
                self.qos_admin.attach(p["qos"], p["account"], p["users"])
        except (SlurmError, ValueError) as exc:
            # not retried from the outbox: the next cycle plans from what Slurm then holds
            log.warning("QOS %s not written: %s", p["qos"], exc,
                        extra={"fields": {"connector": self.name}})
            return Outcome.skipped(action, f"sacctmgr: {exc}")
        return Outcome.done(action, action.reason)

    def check(self) -> list[str]:
        problems = self.service.check()
        if self.mode == "native" and self.qos_admin is not None:
            try:
                problems += [f"mode native: {p}" for p in self.qos_admin.enforcement().problems()]
            except SlurmError as exc:
                problems.append(f"mode native: {exc}")
        return problems


def _runs_by_job(keys: Iterable[str]) -> dict[tuple[str, int], set[int]]:
    """The start times of the runs in ``keys``, per job (cluster, job id)."""
    runs: dict[tuple[str, int], set[int]] = defaultdict(set)
    for key in keys:
        parts = RunKey.parse(key)
        if parts is not None:
            runs[parts.job].add(parts.start)
    return runs


def reconcile_actions(jobs: Iterable[Job], prices: Prices,
                      accounts: frozenset[str] = frozenset()) -> list[Action]:
    """``slurm-sync bank reconcile``: a PUT of the actual amount for every ended run in
    ``jobs`` (sacct over the period asked for); the service's PUT is an idempotent upsert."""
    out = []
    for job in jobs:
        if not (job.state.finished and job.start_time and job.hosts):
            continue
        if accounts and (job.account or "") not in accounts:
            continue
        uid = uid_of(job)
        amount = actual_cost(job, prices)
        if uid is None or isinstance(amount, str):
            continue
        out.append(Action("bank", STOP, delivery_key(job),
                          {"record": job_record(job, amount, uid, ended=True)}, "reconcile"))
    return out


def reconcile_command(ctx: CommandContext) -> int:
    """``slurm-sync bank reconcile``: every run that ended in the period, re-sent with its
    actual cost (an idempotent PUT): what the plugins needed separate scripts for."""
    from dateutil import parser as dates

    args, out, err = ctx.args, ctx.out, ctx.err
    settings = ctx.settings("bank")
    try:
        since = dates.parse(args.since).timestamp()
        until = dates.parse(args.until).timestamp() if args.until else time.time()
    except (ValueError, OverflowError) as exc:
        raise ConfigError(f"bank reconcile: not a date: {exc}") from exc
    if since >= until:
        raise ConfigError("bank reconcile: --since must be before --until")
    connector = BankConnector(dict(settings))
    window = SacctWindow(int(since), int(until) + 1)
    ended = ctx.reader().sacct(window, JobFilter(states=("all",))).jobs
    actions = [a for a in reconcile_actions(ended, connector.prices, connector.accounts)
               if (e := a.payload["record"].get("enddate"))
               and since <= dates.parse(e).timestamp() <= until]
    failed = 0
    for action in actions:
        record = action.payload["record"]
        if args.bank_dry_run:
            out.print(f"would send job {record['jobslurmid']}: {record['amount']} SU "
                      f"({record['accountid']})", highlight=False, markup=False)
            continue
        outcome = connector.apply(action)
        if not outcome.status.delivered:
            failed += 1
            err.print(f"job {record['jobslurmid']}: {outcome.detail}", highlight=False,
                      markup=False)
    connector.close()
    verb = "would re-send" if args.bank_dry_run else "re-sent"
    out.print(f"{verb} {len(actions) - failed} ended jobs from {_when(since)} to "
              f"{_when(until)}; {failed} failed", highlight=False)
    return EXIT_FAILED if failed else EXIT_OK


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
