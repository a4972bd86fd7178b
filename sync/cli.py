"""The ``slurm-sync`` command (also installed as ``sync``): argument parsing and output only.

    $ slurm-sync -c config.json jobs --state R --state PD
    $ slurm-sync jobs --json | jq '.jobs[].job_id'

Exit codes: 0 done; 1 some actions failed (they wait in the outbox, or failed for good and were
recorded); 2 usage or config error (nothing was changed); 3 Slurm unavailable; 75 another run
holds the lock.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from slurm_sync import __version__
from slurm_sync.actions import Action, Outcome, Status
from slurm_sync.config import Config, ConnectorSettings, load_config
from slurm_sync.connector import Connector, Direction, Scope, SlurmContext, discover
from slurm_sync.engine import CycleOptions, CycleReport, LockHeld, RunLock, behind, run_cycle
from slurm_sync.errors import ConfigError, SlurmError, SlurmFormatError, SyncError
from slurm_sync.log import setup_logging
from slurm_sync.metrics import render_metrics, write_metrics
from slurm_sync.slurm.model import Job
from slurm_sync.slurm.query import JobFilter, SacctWindow, state_names
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner
from slurm_sync.store import Backoff, Delivery, RunCount, Store

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SLURM, EXIT_LOCKED = 0, 1, 2, 3, 75

PROGRESS_FROM = 20
"""A progress bar is drawn (on a terminal only) when a connector applies this many actions."""

log = logging.getLogger("slurm_sync.cli")


class _Bar:
    """A rich progress bar on standard error for connectors that apply many actions; silent
    when stderr is not a terminal (cron, systemd) or the batch is small."""

    def __init__(self, err: Console) -> None:
        self._err = err
        self._progress: Progress | None = None

    def begin(self, connector: str, total: int) -> None:
        if total < PROGRESS_FROM or not self._err.is_terminal:
            return
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=self._err, transient=True,
        )
        self._progress.start()
        self._progress.add_task(f"{connector}: applying", total=total)

    def advance(self, outcome: Outcome) -> None:
        if self._progress is not None:
            self._progress.advance(self._progress.task_ids[0])

    def end(self, connector: str) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slurm-sync",
        description="Keep Slurm and outside services in agreement.",
    )
    parser.add_argument("--version", action="version", version=f"slurm-sync {__version__}")
    parser.add_argument("-c", "--config", help="config.json (default: Slurm commands from PATH)")
    parser.add_argument("--direction", choices=[d.value for d in Direction], default="both",
                        help="start records, stop them, or both (default)")
    parser.add_argument("-j", "--jobid", dest="run_jobids", action="append", type=int,
                        default=[], help="only this job (repeatable); the watermark stays")
    parser.add_argument("-l", "--limit", type=int, default=None,
                        help="at most N actions per direction; the rest wait for the next run")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan; change nothing anywhere, the store included")
    parser.add_argument("--force", action="store_true",
                        help="take stops even beyond stop_guard_share of the tracked jobs")
    parser.add_argument("--connector", action="append", default=[],
                        help="run only this connector (repeatable)")
    parser.add_argument("--json", dest="run_json", action="store_true",
                        help="print the report as JSON")
    parser.add_argument("--loop", type=float, default=None, metavar="SECONDS",
                        help="run a cycle every SECONDS until interrupted (for systemd)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log each action (-v) and each Slurm call (-vv) to stderr")
    parser.add_argument("-d", "--debug", dest="verbose", action="store_const", const=2,
                        help="as -vv (cc-slurm-sync's option)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print nothing when all went well (for cron)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="one sync cycle (the default)")
    status = sub.add_parser("status", help="watermarks, outbox, lag and the last run, per "
                                           "connector")
    status.add_argument("--json", dest="run_json", action="store_true",
                        default=argparse.SUPPRESS, help="print the state as JSON")
    sub.add_parser("check", help="validate config, reach Slurm and each service, check files")
    retry = sub.add_parser(
        "retry", help="send actions refused for good again (after fixing what refused them)")
    retry.add_argument("--connector", dest="retry_connectors", action="append", default=[],
                       help="only this connector's (repeatable)")
    retry.add_argument("-j", "--jobid", dest="retry_jobids", action="append", type=int,
                       default=[], help="only this Slurm job's runs (repeatable)")
    retry.add_argument("--since", dest="retry_since", metavar="TIME",
                       help="only those refused at or after TIME (epoch seconds or a date)")
    retry.add_argument("--dry-run", dest="retry_dry_run", action="store_true",
                       help="list what would be sent again; change nothing")

    cockpit = sub.add_parser("clustercockpit", help="ClusterCockpit helpers")
    cockpit_sub = cockpit.add_subparsers(dest="cc_command", metavar="COMMAND", required=True)
    cockpit_sub.add_parser(
        "discover-accelerators",
        help="print this node's 'accelerators' block (gres index -> PCI bus id) from nvidia-smi")

    kite = sub.add_parser("buildkite", help="Buildkite helpers: pipeline secrets")
    kite_sub = kite.add_subparsers(dest="bk_command", metavar="COMMAND", required=True)
    encrypt = kite_sub.add_parser(
        "encrypt", help="encrypt a secret for a pipeline's env (asks for the value, never argv)")
    encrypt.add_argument("public_key", help="the agents' RSA public key (PEM)")
    encrypt.add_argument("--name", help="the variable's name (asked when left out)")
    encrypt.add_argument("--repository", help="only builds of this repository may decrypt it")
    decrypt = kite_sub.add_parser(
        "decrypt-env", help="for the agent's environment hook: print exports of SECRET_* vars")
    decrypt.add_argument("private_key", help="the agents' RSA private key (PEM, mode 600)")
    decrypt.add_argument("--require-repository", action="store_true",
                         help="refuse secrets not bound to a repository")

    bank = sub.add_parser("bank", help="allocation bank helpers")
    bank_sub = bank.add_subparsers(dest="bank_command", metavar="COMMAND", required=True)
    reconcile = bank_sub.add_parser(
        "reconcile", help="re-send the actual cost of every job that ended in a period (sacct)")
    reconcile.add_argument("--since", required=True, help="start of the period (a date/time)")
    reconcile.add_argument("--until", help="end of the period (default: now)")
    reconcile.add_argument("--dry-run", dest="bank_dry_run", action="store_true",
                           help="list what would be sent")

    jobs = sub.add_parser("jobs", help="show the jobs Slurm reports, as slurm-sync reads them")
    jobs.add_argument(
        "-t", "--state", action="append", default=[],
        help="job state (R, PD, CD, ... or 'all'); repeatable; default: not finished",
    )
    jobs.add_argument("-j", "--jobid", action="append", type=int, default=[], help="job id")
    jobs.add_argument("-u", "--user", action="append", default=[], help="user name")
    jobs.add_argument("-p", "--partition", action="append", default=[], help="partition")
    jobs.add_argument("-n", "--name", action="append", default=[], help="job name")
    jobs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _when(epoch: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


def _limit(minutes: int | None) -> str:
    if minutes is None:
        return "UNLIMITED"
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    return (f"{days}-" if days else "") + f"{hours:02d}:{mins:02d}:00"


def _gpus(job: Job) -> str:
    if not job.gpu_count:
        return "-"
    return ", ".join(
        f"{a.hostname}:{','.join(map(str, a.gpu_ids))}" for a in job.allocations if a.gpu_ids
    )


def _cmd_jobs(args: argparse.Namespace, reader: SlurmReader, out: Console, err: Console) -> int:
    states = tuple(args.state)
    try:
        state_names(states)  # a usage error, found before Slurm is asked
    except SlurmFormatError as exc:
        raise ConfigError(f"--state: {exc}") from exc
    job_filter = JobFilter(
        states=states,
        job_ids=tuple(args.jobid),
        names=tuple(args.name),
        users=tuple(args.user),
        partitions=tuple(args.partition),
    )
    result = reader.squeue(job_filter)
    for skipped in result.skipped:
        err.print(
            f"[yellow]skipped[/] squeue record {skipped.index} (job {skipped.job_id}): "
            f"{escape(skipped.reason)}",
            highlight=False,
        )
    if args.json:
        document = {
            "producer": dataclasses.asdict(result.producer),
            "jobs": [j.to_dict() for j in result.jobs],
            "skipped": [dataclasses.asdict(s) for s in result.skipped],
        }
        out.print_json(json.dumps(document, default=list))
        return EXIT_OK
    table = Table(title=f"Slurm {result.producer.release} ({result.producer.plugin})")
    for column in ("JOBID", "NAME", "USER", "STATE", "NODES", "CPUS", "GPUS", "START", "LIMIT"):
        table.add_column(column, overflow="fold")
    for job in result.jobs:
        table.add_row(*map(escape, (
            job.display_id,
            job.name,
            job.user or "-",
            job.state.value + (f" ({job.reason})" if job.reason else ""),
            job.nodelist or "-",
            str(job.cpus) if job.cpus is not None else "-",
            _gpus(job),
            _when(job.start_time),
            _limit(job.time_limit),
        )))
    out.print(table)
    out.print(f"{len(result.jobs)} jobs, {len(result.skipped)} records skipped", highlight=False)
    return EXIT_OK


def _connectors(
    args: argparse.Namespace, config: Config, registry: dict[str, type[Connector]],
    reader: SlurmReader,
) -> dict[str, Connector]:
    configured = {n: c for n, c in config.connectors.items() if c.enabled}
    if not configured:
        # The embedded sink to standard output, so a first run needs no outside service.
        configured = {"events": ConnectorSettings("events", True, {"output": "-"})}
    if args.connector:
        unknown = set(args.connector) - set(configured)
        if unknown:
            raise ConfigError(f"--connector {', '.join(sorted(unknown))}: not enabled in config")
        configured = {n: c for n, c in configured.items() if n in args.connector}
    built = {n: registry[n](dict(c.settings)) for n, c in configured.items()}
    for name, connector in built.items():
        connector.bind(SlurmContext(reader=reader, cluster=config.cluster))
        for warning in connector.warnings:
            log.warning(warning, extra={"fields": {"connector": name}})
    return built


def _store_path(config: Config) -> str:
    return os.path.join(config.state_dir, "state.db")


def _cmd_run(
    args: argparse.Namespace, config: Config, registry: dict[str, type[Connector]],
    reader: SlurmReader, out: Console, err: Console,
) -> int:
    if args.limit is not None and args.limit < 0:
        raise ConfigError("--limit must be 0 or more")
    if args.loop is not None and not (math.isfinite(args.loop) and args.loop > 0):
        raise ConfigError(f"--loop {args.loop}: give the seconds between cycles, a number above 0")
    connectors = _connectors(args, config, registry, reader)
    options = CycleOptions(
        direction=Direction(args.direction),
        scope=Scope(job_ids=tuple(args.run_jobids), limit=args.limit),
        dry_run=args.dry_run,
        force=args.force,
        stop_guard_share=config.stop_guard_share,
        stop_guard_min=config.stop_guard_min,
        sacct_overlap=config.sacct_overlap_seconds,
        first_window=config.first_window_seconds,
        max_lag=config.max_lag_seconds,
    )
    try:
        while True:
            started = time.time()
            code = _one_run(args, config, connectors, reader, options, started, out, err)
            if not args.loop:
                return code
            time.sleep(max(0.0, started + args.loop - time.time()))
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        for connector in connectors.values():
            connector.close()


def _one_run(
    args: argparse.Namespace, config: Config, connectors: dict[str, Connector],
    reader: SlurmReader, options: CycleOptions, started: float, out: Console, err: Console,
) -> int:
    calls_before = len(reader.runner.calls)
    if args.dry_run:
        with Store.open(_store_path(config), read_only=True) as store:
            report = run_cycle(reader, store, connectors, options, now=started)
    else:
        bar = None if (args.quiet or args.run_json) else _Bar(err)
        try:
            backoff = Backoff(base=config.retry_base_seconds, cap=config.retry_max_seconds)
            with RunLock(config.state_dir), Store.open(_store_path(config),
                                                       backoff=backoff) as store:
                report = run_cycle(reader, store, connectors, options, now=started,
                                   progress=bar)
                ended = time.time()
                store.record_run(
                    started=started, ended=ended, exit_code=report.exit_code,
                    counts=RunCount.from_outcomes(report.outcomes), skipped=len(report.skipped),
                )
                if config.metrics_file:
                    write_metrics(config.metrics_file, render_metrics(
                        finished=ended, duration=ended - started, exit_code=report.exit_code,
                        outcomes=report.outcomes,
                        outbox_depth={n: store.outbox_stats(connector=n).depth
                                      for n in connectors},
                        calls=reader.runner.calls[calls_before:],
                        lag=[lag for n in connectors if (lag := store.lag(connector=n))],
                        watermarks={n: mark for n in connectors
                                    if (mark := store.get_watermark(connector=n)) is not None},
                        behind={line.split(":", 1)[0] for line in report.behind},
                        slurm_failed=bool(report.slurm_errors),
                        connector_errors=len(report.connector_errors),
                        skipped_records=len(report.skipped),
                    ))
        except LockHeld as exc:
            if not args.loop:
                raise
            err.print(f"[yellow]skipped a cycle:[/] {escape(str(exc))}", highlight=False)
            return EXIT_LOCKED
    if not (args.quiet and report.exit_code == 0 and not report.refused and not report.skipped):
        _print_report(report, args.run_json, args.dry_run, out, err)
    return report.exit_code


def _print_report(
    report: CycleReport, as_json: bool, dry_run: bool, out: Console, err: Console
) -> None:
    for line in report.slurm_errors:
        err.print(f"[red]Slurm:[/] {escape(line)}", highlight=False)
    for line in report.connector_errors:
        err.print(f"[red]connector:[/] {escape(line)}", highlight=False)
    for line in report.skipped:
        err.print(f"[yellow]skipped[/] {escape(line)}", highlight=False)
    for line in report.refused:
        err.print(f"[yellow]refused:[/] {escape(line)}", highlight=False)
    for line in report.behind:
        err.print(f"[red]behind:[/] {escape(line)}", highlight=False)
    outcome_of = {(o.action.connector, o.action.kind, o.action.key): o for o in report.outcomes}
    shown_actions = [*report.retried, *report.planned]

    def entry(a: Action) -> dict[str, str]:
        o = outcome_of.get((a.connector, a.kind, a.key))
        return {"connector": a.connector, "kind": a.kind, "key": a.key, "reason": a.reason,
                "outcome": o.status.value if o else "planned", "detail": o.detail if o else ""}

    if as_json:
        out.print_json(json.dumps({
            "dry_run": dry_run,
            "actions": [entry(a) for a in report.planned],
            "retried": [entry(a) for a in report.retried],
            "deferred": len(report.deferred),
            "refused": report.refused,
            "slurm_errors": report.slurm_errors,
            "connector_errors": report.connector_errors,
            "skipped_records": report.skipped,
            "behind": report.behind,
            "lag": {name: {"ended_unstopped": lag.ended_unstopped, "oldest_end": lag.oldest_end,
                           "unknown": lag.unknown, "refused": lag.refused}
                    for name, lag in report.lag.items()},
            "exit_code": report.exit_code,
        }))
        return
    table = Table(title="plan (dry run: nothing done)" if dry_run else "actions")
    for column in ("CONNECTOR", "ACTION", "JOB", "WHY", "OUTCOME"):
        table.add_column(column, overflow="fold")
    retried = {id(a) for a in report.retried}
    for action in shown_actions:
        outcome = outcome_of.get((action.connector, action.kind, action.key))
        shown = "planned" if outcome is None else outcome.status.value
        if outcome is not None and outcome.detail:
            shown += f": {outcome.detail}"
        why = f"retry: {action.reason}" if id(action) in retried else action.reason
        table.add_row(*map(escape, (action.connector, action.kind, action.key, why, shown)))
    if shown_actions:
        out.print(table)
    done = sum(o.status.delivered for o in report.outcomes)
    failed = sum(o.status in (Status.TRANSIENT, Status.PERMANENT) for o in report.outcomes)
    out.print(
        f"{len(report.planned)} planned, {len(report.retried)} retried from the outbox, "
        f"{done} done, {failed} failed, "
        f"{len(report.deferred)} deferred by --limit, {len(report.refused)} refused",
        highlight=False,
    )


def _check_state_dir(path: str) -> str:
    if not os.path.exists(path):
        parent = os.path.dirname(path.rstrip("/")) or "/"
        if not os.access(parent, os.W_OK):
            return f"{path} does not exist and {parent} is not writable"
        return ""
    mode = os.stat(path).st_mode & 0o777
    if not os.access(path, os.W_OK):
        return f"{path} is not writable by uid {os.getuid()}"
    if mode & 0o002:
        return f"{path} is writable by everyone (mode {mode:o}); chmod 700"
    return ""


def _cmd_check(
    args: argparse.Namespace, config: Config, registry: dict[str, type[Connector]],
    reader: SlurmReader, out: Console,
) -> int:
    """Each check as a row; changes nothing anywhere."""
    rows: list[tuple[str, str]] = [("config", "")]
    try:
        version = reader.version()
        reader.squeue(JobFilter(states=("R",)))
        now = int(time.time())
        reader.sacct(SacctWindow(now - 60, now))
        release = f"{version[0]}.{version[1]:02d}.{version[2]}"
        rows.append((f"Slurm {release}: squeue and sacct", ""))
    except SlurmError as exc:
        rows.append(("Slurm: squeue and sacct", str(exc)))
    if config.slurm.state_save_location:
        where = config.slurm.state_save_location
        problem = "" if os.access(where, os.R_OK | os.X_OK) else f"{where} is not readable"
        rows.append(("StateSaveLocation", problem))
    rows.append((f"state_dir {config.state_dir}", _check_state_dir(config.state_dir)))
    path = _store_path(config)
    if os.path.exists(path):
        with Store.open(path, read_only=True) as store:
            for name in store.connectors():
                rows.append((f"lag of {name}",
                             _behind(store, name, time.time(), config.max_lag_seconds)))
    for name, connector in _connectors(args, config, registry, reader).items():
        problems = [*connector.warnings, *connector.check()]
        rows.append((f"connector {name}", "; ".join(problems)))
        connector.close()
    table = Table(title="slurm-sync check")
    table.add_column("CHECK")
    table.add_column("RESULT", overflow="fold")
    for what, problem in rows:
        table.add_row(escape(what), f"[red]{escape(problem)}[/]" if problem else "[green]ok[/]")
    out.print(table)
    return EXIT_FAILED if any(problem for _, problem in rows) else EXIT_OK


def _ago(now: float, epoch: float | None) -> str:
    return "-" if epoch is None else f"{_when(int(epoch))} ({max(0, now - epoch):.0f} s ago)"


def _behind(store: Store, name: str, now: float, max_lag: float | None) -> str:
    """Why connector ``name`` is further behind than ``max_lag``, from what the store holds."""
    lag = store.lag(connector=name)
    return behind(now, max_lag, lag.oldest_end if lag else None,
                  store.outbox_stats(connector=name).oldest, store.get_watermark(connector=name))


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _status_of(store: Store, name: str, now: float, max_lag: float | None) -> dict[str, Any]:
    """One connector's state as plain data: what ``status`` shows and ``status --json`` prints."""
    stats = store.outbox_stats(connector=name)
    counts = store.delivery_counts(connector=name)
    lag = store.lag(connector=name)
    return {
        "connector": name,
        "watermark": store.get_watermark(connector=name),
        "outbox": stats.depth,
        "oldest_queued": stats.oldest,
        "delivered": counts.get(Status.DONE, 0) + counts.get(Status.ALREADY_DONE, 0),
        "refused": counts.get(Status.PERMANENT, 0),
        "ended_unstopped": lag.ended_unstopped if lag else None,
        "oldest_unstopped_end": lag.oldest_end if lag else None,
        "unknown_to_slurm": lag.unknown if lag else None,
        "held_by_guard": lag.refused if lag else None,
        "behind": _behind(store, name, now, max_lag),
    }


def _cmd_status(config: Config, out: Console, as_json: bool = False) -> int:
    """Per connector: watermark, outbox, deliveries, refusals, and how far it is behind."""
    path = _store_path(config)
    now = time.time()
    with Store.open(path, read_only=True) as store:
        last = store.last_run()
        rows = [_status_of(store, name, now, config.max_lag_seconds)
                for name in store.connectors()]
        refusals = [item for name in store.connectors() for item in store.refusals(connector=name)]
    if as_json:
        out.print_json(json.dumps({
            "state": path, "now": now, "max_lag_seconds": config.max_lag_seconds,
            "connectors": rows,
            "refusals": [{"connector": r.connector, "kind": r.kind, "key": r.key, "at": r.at,
                          "detail": r.detail.get("detail", "")} for r in refusals],
            "last_run": None if last is None else {
                "started": last.started, "ended": last.ended, "exit_code": last.exit_code,
                "actions": sum(c.count for c in last.counts), "skipped_records": last.skipped},
        }))
        return EXIT_OK
    table = Table(title=f"slurm-sync state in {path}")
    for column in ("CONNECTOR", "WATERMARK", "OUTBOX", "OLDEST QUEUED", "DELIVERED",
                   "REFUSED", "ENDED, NOT STOPPED", "OLDEST END", "UNKNOWN TO SLURM",
                   "HELD BY GUARD"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["connector"], _ago(now, row["watermark"]), str(row["outbox"]),
            _ago(now, row["oldest_queued"]), str(row["delivered"]), str(row["refused"]),
            _count(row["ended_unstopped"]), _ago(now, row["oldest_unstopped_end"]),
            _count(row["unknown_to_slurm"]), _count(row["held_by_guard"]),
        )
    out.print(table)
    for row in rows:
        if row["behind"]:
            out.print(f"[red]behind:[/] {escape(row['connector'])}: {escape(row['behind'])}",
                      highlight=False)
    if refusals:
        refused = Table(title="refused for good (newest first; `slurm-sync retry` sends again)")
        for column in ("CONNECTOR", "ACTION", "JOB", "WHEN", "WHY"):
            refused.add_column(column, overflow="fold")
        for item in refusals:
            refused.add_row(*map(escape, (item.connector, item.kind, item.key,
                                          _when(int(item.at)),
                                          str(item.detail.get("detail", "")))))
        out.print(refused)
    if last is None:
        out.print("no run recorded yet")
    else:
        out.print(
            f"last run: {_when(int(last.started))}, exit code {last.exit_code}, "
            f"{sum(c.count for c in last.counts)} actions, "
            f"{last.skipped} Slurm records skipped (unreadable; the run names them)",
            highlight=False,
        )
    return EXIT_OK


def _epoch(text: str, option: str) -> float:
    """`_epoch("1790000000", "--since")` is that epoch; a date or date-time (ISO 8601 or
    anything dateutil reads, local time unless it names a zone) is turned into one."""
    from dateutil import parser as dates

    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dates.parse(text).timestamp()
    except (ValueError, OverflowError) as exc:
        raise ConfigError(f"{option}: {text!r} is neither epoch seconds nor a date: {exc}") from exc


def _cmd_retry(args: argparse.Namespace, config: Config, out: Console, err: Console) -> int:
    """Refused-for-good actions are planned again by the next run: their refusal records go
    (one transaction), since the store does not keep a refused payload."""
    names = list(dict.fromkeys([*args.connector, *args.retry_connectors]))
    job_ids = tuple(dict.fromkeys([*args.run_jobids, *args.retry_jobids]))
    since = _epoch(args.retry_since, "--since") if args.retry_since else None
    dry_run = bool(args.dry_run or args.retry_dry_run)
    path = _store_path(config)
    with Store.open(path, read_only=True) as store:
        known = set(store.connectors())
    unknown = [n for n in names if n not in known and n not in config.connectors]
    if unknown:
        raise ConfigError(f"--connector {', '.join(unknown)}: neither configured nor in {path}")

    def requeue(store: Store) -> list[Delivery]:
        found: list[Delivery] = []
        for name in names or [None]:
            found += store.requeue_refused(connector=name, job_ids=job_ids, since=since,
                                           dry_run=dry_run)
        return found

    if dry_run:
        with Store.open(path, read_only=True) as store:
            requeued = requeue(store)
    else:
        with RunLock(config.state_dir), Store.open(path) as store:
            requeued = requeue(store)
    if not requeued:
        out.print("nothing refused matches", highlight=False)
        return EXIT_OK
    table = Table(title="would be sent again (dry run: nothing changed)" if dry_run
                  else "sent again by the next run")
    for column in ("CONNECTOR", "ACTION", "JOB", "REFUSED", "WHY"):
        table.add_column(column, overflow="fold")
    for item in requeued:
        table.add_row(*map(escape, (item.connector, item.kind, item.key, _when(int(item.at)),
                                    str(item.detail.get("detail", "")))))
    out.print(table)
    verb = "would be planned" if dry_run else "are planned"
    out.print(f"{len(requeued)} refused action(s) {verb} again by the next run, from what "
              f"Slurm shows then", highlight=False)
    if not dry_run:
        out.print("the next run's sacct window reaches back to the oldest of them",
                  highlight=False)
    return EXIT_OK


def _cmd_bank_reconcile(
    args: argparse.Namespace, config: Config, registry: dict[str, type[Connector]],
    reader: SlurmReader, out: Console, err: Console,
) -> int:
    """Every run that ended in the period, re-sent with its actual cost (an idempotent PUT):
    what the plugins needed separate scripts for."""
    from dateutil import parser as dates

    from slurm_sync.connectors.bank import BankConnector, reconcile_actions

    settings = config.connectors.get("bank")
    if settings is None or not settings.enabled:
        raise ConfigError("bank reconcile: no enabled 'bank' connector in config")
    try:
        since = dates.parse(args.since).timestamp()
        until = dates.parse(args.until).timestamp() if args.until else time.time()
    except (ValueError, OverflowError) as exc:
        raise ConfigError(f"bank reconcile: not a date: {exc}") from exc
    if since >= until:
        raise ConfigError("bank reconcile: --since must be before --until")
    connector = registry["bank"](dict(settings.settings))
    assert isinstance(connector, BankConnector)
    window = SacctWindow(int(since), int(until) + 1)
    ended = reader.sacct(window, JobFilter(states=("all",))).jobs
    actions = [a for a in reconcile_actions(ended, connector.prices, connector.accounts)
               if (e := a.payload["record"].get("enddate")) and since <= dates.parse(e).timestamp()
               <= until]
    failed = 0
    for action in actions:
        record = action.payload["record"]
        if args.bank_dry_run:
            out.print(f"would send job {record['jobslurmid']}: {record['amount']} SU "
                      f"({record['accountid']})", highlight=False)
            continue
        outcome = connector.apply(action)
        if not outcome.status.delivered:
            failed += 1
            err.print(f"job {record['jobslurmid']}: {outcome.detail}", highlight=False,
                      markup=False)
    connector.close()
    verb = "would re-send" if args.bank_dry_run else "re-sent"
    out.print(f"{verb} {len(actions) - failed} ended jobs from {_when(int(since))} to "
              f"{_when(int(until))}; {failed} failed", highlight=False)
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_discover_accelerators(out: Console, err: Console) -> int:
    """Print the accelerators block of this node; needs no config and changes nothing."""
    from slurm_sync.connectors.clustercockpit import NVIDIA_SMI_QUERY, accelerators_block

    smi = shutil.which("nvidia-smi")
    if smi is None:
        err.print("nvidia-smi is not on PATH: this node has no NVIDIA driver tools, so there is "
                  "nothing to discover here (run this on a GPU node).", highlight=False)
        return EXIT_FAILED
    try:
        done = subprocess.run([smi, *NVIDIA_SMI_QUERY], capture_output=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        err.print(f"nvidia-smi did not run: {exc}", highlight=False, markup=False)
        return EXIT_FAILED
    if done.returncode != 0:
        first = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        err.print(f"nvidia-smi failed (exit {done.returncode}): {first[0] if first else ''}",
                  highlight=False)
        return EXIT_FAILED
    try:
        block = accelerators_block(socket.gethostname().split(".")[0],
                                   done.stdout.decode(errors="replace"))
    except ValueError as exc:
        err.print(str(exc), highlight=False)
        return EXIT_FAILED
    out.print_json(json.dumps(block))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``slurm-sync`` and ``sync``."""
    parser = _parser()
    args = parser.parse_args(argv)
    # errors and warnings are never folded: a cron mail or a log keeps each on one line
    err = Console(stderr=True, soft_wrap=True)
    # Every way out is one line and a documented exit code, never a traceback: messages are
    # printed as text (a value in them may look like rich markup, "[/x]").

    logging_ready = False
    try:
        out = Console()
        if not out.is_terminal:
            # Piped into grep or a log: do not fold names at 80 columns.
            out = Console(width=200)
        if args.command == "clustercockpit":
            return _cmd_discover_accelerators(out, err)
        if args.command == "buildkite":
            from slurm_sync.connectors import buildkite_secrets

            if args.bk_command == "encrypt":
                return buildkite_secrets.cli_encrypt(args.public_key, name=args.name,
                                                     repository=args.repository)
            return buildkite_secrets.cli_decrypt_env(args.private_key, os.environ, sys.stdout,
                                                     require_repository=args.require_repository)
        registry = discover()
        config = load_config(args.config, {n: dict(c.schema) for n, c in registry.items()})
        setup_logging(-1 if args.quiet else args.verbose, config.log_format)
        logging_ready = True
        reader = SlurmReader(
            Runner(config.slurm.commands),
            cluster=config.cluster,
            state_save_location=config.slurm.state_save_location,
        )
        if args.command == "jobs":
            return _cmd_jobs(args, reader, out, err)
        if args.command == "status":
            return _cmd_status(config, out, args.run_json)
        if args.command == "check":
            return _cmd_check(args, config, registry, reader, out)
        if args.command == "bank":
            return _cmd_bank_reconcile(args, config, registry, reader, out, err)
        if args.command == "retry":
            return _cmd_retry(args, config, out, err)
        return _cmd_run(args, config, registry, reader, out, err)
    except ConfigError as exc:
        err.print(f"[red]config error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    except LockHeld as exc:
        err.print(f"[yellow]not run:[/] {escape(str(exc))}", highlight=False)
        return EXIT_LOCKED
    except SlurmError as exc:
        err.print(f"[red]Slurm unavailable:[/] {escape(str(exc))}", highlight=False)
        return EXIT_SLURM
    except SyncError as exc:
        # the state database (StoreError) or another file or setting, named in the message
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): say nothing more, and keep the interpreter from
        # failing to flush standard output on its way out
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass  # standard output is not a file (captured): nothing to flush
        return 141
    except Exception as exc:  # a bug: one line, the traceback only with -vv
        import traceback

        first = (str(exc).strip().splitlines() or [""])[0][:200]
        err.print(f"[red]internal error:[/] {type(exc).__name__}: {escape(first)} (a bug in "
                  "slurm-sync: please report it with the output of -vv)", highlight=False)
        if args.verbose >= 2:
            if not logging_ready:  # it failed before logging was set up
                setup_logging(2)
            log.debug("internal error", extra={"fields": {"traceback": traceback.format_exc()}})
        return 70


if __name__ == "__main__":
    sys.exit(main())
