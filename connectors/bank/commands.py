"""The Bank's own subcommand: ``slurm-sync bank reconcile``.

    slurm-sync -c config.json bank reconcile --since 2026-11-01 [--until 2026-11-28] [--dry-run]

Every run that ended in the period, as sacct reports it, is sent again with its actual cost (an
idempotent ``PUT``): what slurm-banking-plugins needed separate scripts for.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from slurm_sync.actions import Action
from slurm_sync.commands import EXIT_FAILED, EXIT_OK, CommandContext
from slurm_sync.connector import delivery_key
from slurm_sync.connectors.bank.cost import actual_cost
from slurm_sync.connectors.bank.model import STOP, uid_of
from slurm_sync.connectors.bank.observe import look_up_uids
from slurm_sync.connectors.bank.service import job_record
from slurm_sync.connectors.bank.settings import Prices
from slurm_sync.errors import ConfigError
from slurm_sync.slurm.model import Job
from slurm_sync.slurm.query import JobFilter, SacctWindow

__all__ = ["add_commands", "reconcile_actions", "reconcile_command"]


def add_commands(commands: Any) -> None:
    """``bank reconcile`` under the ``slurm-sync`` subparsers ``commands``."""
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


def reconcile_actions(jobs: Iterable[Job], prices: Prices, uids: Mapping[str, int | None],
                      accounts: frozenset[str] = frozenset()) -> list[Action]:
    """A PUT of the actual amount for every ended run in ``jobs`` (sacct over the period asked
    for), pure: ``uids`` is NSS's word on the owners sacct gives no uid of. The service's PUT
    is an idempotent upsert."""
    out = []
    for job in jobs:
        if not (job.state.finished and job.start_time and job.hosts):
            continue
        if accounts and (job.account or "") not in accounts:
            continue
        uid = uid_of(job, uids)
        amount = actual_cost(job, prices)
        if uid is None or isinstance(amount, str):
            continue
        out.append(Action("bank", STOP, delivery_key(job),
                          {"record": job_record(job, amount, uid, ended=True)}, "reconcile"))
    return out


def reconcile_command(ctx: CommandContext) -> int:
    """``slurm-sync bank reconcile``: every run that ended in the period, re-sent with its
    actual cost (an idempotent PUT)."""
    from dateutil import parser as dates

    from slurm_sync.connectors.bank.connector import BankConnector

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
    uids = look_up_uids(j.user for j in ended if j.uid is None and j.user)
    actions = [a for a in reconcile_actions(ended, connector.config.prices, uids,
                                            connector.config.accounts)
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
