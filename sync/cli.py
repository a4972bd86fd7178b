"""The ``slurm-sync`` command (also installed as ``sync``): argument parsing and output only.

    $ slurm-sync -c config.json jobs --state R --state PD
    $ slurm-sync jobs --json | jq '.jobs[].job_id'

Exit codes: 0 done; 1 some actions failed (they wait in the outbox, or failed for good and were
recorded); 2 usage or config error (nothing was changed); 3 Slurm unavailable; 75 another run
holds the lock.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from slurm_sync import __version__
from slurm_sync.actions import Action, Outcome, Status
from slurm_sync.config import Config, ConnectorSettings, load_config
from slurm_sync.connector import (
    Catalog,
    Connector,
    Direction,
    Scope,
    SlurmContext,
    discover,
)
from slurm_sync.engine import (
    CycleOptions,
    CycleReport,
    LockHeld,
    RunLock,
    behind,
    run_cycle,
    run_key,
)
from slurm_sync.errors import ConfigError, SlurmError, SlurmFormatError, SyncError
from slurm_sync.log import setup_logging
from slurm_sync.metrics import render_metrics, write_metrics
from slurm_sync.slurm.model import Job
from slurm_sync.slurm.query import JobFilter, SacctWindow, state_names
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner
from slurm_sync.spool import Backlog, Pending, Spool
from slurm_sync.store import Backoff, Delivery, RunCount, Store

__all__ = ["main"]

from slurm_sync.commands import (
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_SLURM,
    EXIT_USAGE,
    CommandContext,
)

PROGRESS_FROM = 20
"""A progress bar is drawn (on a terminal only) when a connector applies this many actions."""

HOOK_BATCH = 2000
"""At most this many jobs' hook events go into one cycle of the resident loop (a burst of job
starts is synced in a few cycles, not one per job)."""

END_RETRY = 30.0
"""Seconds an end event is tried again while a connector still has the job's run open."""

HOOK_STALE = 120.0
"""A hook event waiting longer than this many seconds makes ``status`` say the hook is behind
(a resident syncer takes one within a second; a cron run every minute within a minute)."""
HOOK_EVENT = "hook_event"  # the store's note of the newest hook event acted on

log = logging.getLogger("slurm_sync.cli")

if TYPE_CHECKING:  # imported where a bar is drawn: rich.progress and rich.live are 30 ms
    from rich.progress import Progress


class _Bar:
    """A rich progress bar on standard error for connectors that apply many actions; silent
    when stderr is not a terminal (cron, systemd) or the batch is small."""

    def __init__(self, err: Console) -> None:
        self._err = err
        self._progress: Progress | None = None

    def begin(self, connector: str, total: int) -> None:
        if total < PROGRESS_FROM or not self._err.is_terminal:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

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


EPILOG = """\
commands run `run` when none is given: `slurm-sync -c config.json` is one cycle.

exit codes:
  0    all done
  1    an action failed or was refused, or the stop guard held some back
  2    usage or config error (nothing was changed)
  3    a Slurm query failed (nothing was stopped or cancelled)
  4    a connector failed, or its service says it is misconfigured
  5    a connector is behind more than max_lag_seconds
  70   internal error (a bug: please report it with the output of -vv)
  75   not run: another slurm-sync holds the lock
  130  interrupted

examples:
  slurm-sync -c /etc/slurm-sync/config.json -q            from cron, every minute
  slurm-sync sync --direction start -j 1234 --dry-run     the plan for one job's start
  slurm-sync run --loop 60                                resident, for systemd
  slurm-sync status --json                                what fell behind, as JSON
  slurm-sync check                                        config, Slurm and each service
"""

#: the options of the global parser that take a value (for finding the command word)
_GLOBAL_WITH_VALUE = frozenset({"-c", "--config"})
#: The commands of the core (``_parser``); any other command word is a connector's
CORE_COMMANDS = frozenset({"run", "sync", "status", "check", "retry", "jobs"})


def _parser(registry: Mapping[str, type[Connector]] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slurm-sync",
        description="Keep Slurm and outside services in agreement.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"slurm-sync {__version__}")
    _global_options(parser, None)
    parser.set_defaults(verbose=0, quiet=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run", aliases=["sync"], help="one sync cycle (the default; `sync` is the same)",
        description="One sync cycle: read Slurm, plan, apply, record.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--direction", choices=[d.value for d in Direction], default="both",
                     help="start records, stop them, or both (default)")
    run.add_argument("-j", "--jobid", dest="run_jobids", action="append", type=int,
                     default=[], metavar="JOBID",
                     help="only this job (repeatable); the watermark stays")
    run.add_argument("-l", "--limit", type=int, default=None, metavar="N",
                     help="at most N actions per direction; the rest wait for the next run")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan; change nothing anywhere, the store included")
    run.add_argument("--force", action="store_true",
                     help="take stops even beyond stop_guard_share of the tracked jobs")
    run.add_argument("--connector", action="append", default=[], metavar="NAME",
                     help="run only this connector (repeatable)")
    run.add_argument("--json", dest="run_json", action="store_true",
                     help="print the report as JSON")
    run.add_argument("--loop", type=float, default=None, metavar="SECONDS",
                     help="run a cycle every SECONDS until interrupted (for systemd)")
    status = sub.add_parser("status", help="watermarks, outbox, lag and the last run, per "
                                           "connector")
    status.add_argument("--json", dest="run_json", action="store_true",
                        help="print the state as JSON")
    check = sub.add_parser("check", help="validate config, reach Slurm and each service, "
                                         "check files")
    check.add_argument("--json", dest="run_json", action="store_true",
                       help="print the checks as JSON")
    check.add_argument("--connector", action="append", default=[], metavar="NAME",
                       help="check only this connector (repeatable)")
    retry = sub.add_parser(
        "retry", help="send actions refused for good again (after fixing what refused them)")
    retry.add_argument("--connector", dest="retry_connectors", action="append", default=[],
                       metavar="NAME", help="only this connector's (repeatable)")
    retry.add_argument("-j", "--jobid", dest="retry_jobids", action="append", type=int,
                       default=[], metavar="JOBID",
                       help="only this Slurm job's runs (repeatable)")
    retry.add_argument("--since", dest="retry_since", metavar="TIME",
                       help="only those refused at or after TIME (epoch seconds or a date)")
    retry.add_argument("--dry-run", dest="retry_dry_run", action="store_true",
                       help="list what would be sent again; change nothing")
    jobs = sub.add_parser("jobs", help="show the jobs Slurm reports, as slurm-sync reads them")
    jobs.add_argument(
        "-t", "--state", action="append", default=[],
        help="job state (R, PD, CD, ... or 'all'); repeatable; default: not finished",
    )
    jobs.add_argument("-j", "--jobid", action="append", type=int, default=[], metavar="JOBID",
                      help="job id")
    jobs.add_argument("-u", "--user", action="append", default=[], help="user name")
    jobs.add_argument("-p", "--partition", action="append", default=[], help="partition")
    jobs.add_argument("-n", "--name", action="append", default=[], help="job name")
    jobs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for connector in (registry or {}).values():
        connector.add_commands(sub)
    # -c, -v, -d and -q are taken after the command word too (`slurm-sync status -c FILE`,
    # and `slurm-sync --direction start -q`, where `run` goes before --direction)
    for command in _command_parsers(sub):
        _global_options(command, argparse.SUPPRESS)
    return parser


def _command_parsers(sub: Any) -> list[argparse.ArgumentParser]:
    """Every command's parser, nested ones (``bank reconcile``) included."""
    found: list[argparse.ArgumentParser] = []
    for command in dict.fromkeys(sub.choices.values()):
        found.append(command)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += _command_parsers(action)
    return found


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """The options every command takes; ``default`` SUPPRESS on a command's parser, so a value
    given before the command word is not overwritten."""
    options: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        (("-c", "--config"), {"metavar": "FILE", "default": default,
                              "help": "config.json (default: Slurm commands from PATH)"}),
        (("-v", "--verbose"), {"action": "count", "default": default,
                               "help": "log each action (-v) and each Slurm call (-vv) to "
                                       "stderr"}),
        (("-d", "--debug"), {"dest": "verbose", "action": "store_const", "const": 2,
                             "default": default, "help": "as -vv (cc-slurm-sync's option)"}),
        (("-q", "--quiet"), {"action": "store_true", "default": default,
                             "help": "print nothing when all went well (for cron)"}),
    ]
    for flags, kwargs in options:
        # a connector's command may use one of the letters for an option of its own
        with contextlib.suppress(argparse.ArgumentError):
            parser.add_argument(*flags, **kwargs)


def with_command(argv: Sequence[str], commands: Collection[str]) -> list[str]:
    """``argv`` with ``run`` put where the command word goes when it has none: cron lines
    written as ``slurm-sync -c config.json --direction start`` keep working.

    >>> with_command(["-c", "x.json", "--direction", "start"], {"run", "status"})
    ['-c', 'x.json', 'run', '--direction', 'start']
    >>> with_command(["-q", "status"], {"run", "status"})
    ['-q', 'status']
    """
    args = list(argv)
    index = _first_word(args)
    if index < len(args) and (args[index] in commands or args[index] in _HELP):
        return args
    return [*args[:index], "run", *args[index:]]


def _command_word(argv: Sequence[str]) -> str:
    """The command word of ``argv`` (``run`` when it has none, as ``with_command`` puts it),
    or the first word that is neither a global option nor its value (``--help``, a
    connector's command, a typo).

    >>> _command_word(["-c", "x.json", "--direction", "start"]), _command_word(["-q", "status"])
    ('run', 'status')
    >>> _command_word(["bank", "reconcile"]), _command_word(["--help"])
    ('bank', '--help')
    """
    index = _first_word(argv)
    word = argv[index] if index < len(argv) else "run"
    return word if not word.startswith("-") or word in _HELP else "run"


_HELP = ("-h", "--help", "--version")


def _first_word(argv: Sequence[str]) -> int:
    """The index of the first word of ``argv`` that is neither a global option nor its value
    (``len(argv)`` when there is none)."""
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in _GLOBAL_WITH_VALUE:
            index += 2
        elif _global_flag(word):
            index += 1
        else:
            return index
    return len(argv)


def _global_flag(word: str) -> bool:
    """``-v``, ``-vv``, ``-q``, ``-d``, ``-cFILE`` or ``--config=FILE``: one word, global."""
    if word.startswith("--"):
        return word.startswith("--config=") or word in ("--verbose", "--debug", "--quiet")
    return word.startswith("-") and (set(word[1:]) <= set("vdq") or word.startswith("-c"))


def _print_json(out: Console, document: Any) -> None:
    """``document`` as JSON on standard output: coloured by rich on a terminal, plain text
    elsewhere (a pipe, a file, cron), where rich's highlighting took 0.7 s for a run report of
    1,000 actions and the plain text 0.01 s."""
    text = json.dumps(document, indent=2, ensure_ascii=False, default=list)
    if out.is_terminal:
        out.print_json(text)
    else:
        out.file.write(text + "\n")
        out.file.flush()


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
        _print_json(out, document)
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
    args: argparse.Namespace, config: Config, registry: Mapping[str, type[Connector]],
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
        connector.bind(SlurmContext(reader=reader, cluster=config.cluster,
                                    dry_run=bool(getattr(args, "dry_run", False))))
        for warning in connector.warnings:
            log.warning(warning, extra={"fields": {"connector": name}})
    return built


def _store_path(config: Config) -> str:
    return os.path.join(config.state_dir, "state.db")


def _cmd_run(
    args: argparse.Namespace, config: Config, registry: Catalog,
    reader: SlurmReader, out: Console, err: Console,
) -> int:
    if args.limit is not None and args.limit < 0:
        raise ConfigError("--limit must be 0 or more")
    if args.loop is not None and not (math.isfinite(args.loop) and args.loop > 0):
        raise ConfigError(f"--loop {args.loop}: give the seconds between cycles, a number above 0")
    if args.loop:
        return _resident(args, config, registry, reader, out, err)
    connectors = _connectors(args, config, registry, reader)
    options = _options(args, config)
    spool = Spool(config.hook_spool) if config.hook_spool and _covers_events(options) else None
    covered = spool.pending() if spool is not None else None
    try:
        code, _ = _one_run(args, config, connectors, reader, options, time.time(), out, err)
    finally:
        for connector in connectors.values():
            connector.close()
    if spool is not None and covered is not None:
        # this run did what the hook's events asked (cron alone keeps the spool from filling)
        spool.remove(covered.names)
    return code


def _covers_events(options: CycleOptions) -> bool:
    """Whether a cycle with ``options`` acts on every event recorded before it: one that
    changes things, for every job, both ways."""
    return (not options.dry_run and not options.scope.job_ids
            and options.direction is Direction.BOTH)


def _options(args: argparse.Namespace, config: Config) -> CycleOptions:
    return CycleOptions(
        direction=Direction(args.direction),
        scope=Scope(job_ids=tuple(args.run_jobids), limit=args.limit),
        dry_run=args.dry_run,
        force=args.force,
        stop_guard_share=config.stop_guard_share,
        stop_guard_min=config.stop_guard_min,
        sacct_overlap=config.sacct_overlap_seconds,
        first_window=config.first_window_seconds,
        max_lag=config.max_lag_seconds,
        retention=config.retention_days * 86400,
    )


def _load_config(path: str | None, registry: Catalog) -> Config:
    """The config at ``path``, checked against the schemas of the connectors it names (only
    those are loaded); another tool's config is read by the adapter that knows it."""
    return load_config(path, registry.schemas(),
                       adapters=(c.adapt_config for c in registry.values()))


def _reader(config: Config) -> SlurmReader:
    return SlurmReader(
        Runner(config.slurm.commands),
        cluster=config.cluster,
        state_save_location=config.slurm.state_save_location,
    )


class _Signals:
    """What systemd asks of the resident loop: SIGTERM (stop: the loop ends after the cycle in
    flight, whose outcomes are recorded as any cycle's; what it did not send waits in the
    outbox) and SIGHUP (reload the config between cycles). Either wakes the loop's wait."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self.wake = threading.Event()
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stop = True
        self.wake.set()

    def _on_hup(self, signum: int, frame: Any) -> None:
        self.reload = True
        self.wake.set()


def _resident(
    args: argparse.Namespace, config: Config, registry: Catalog,
    reader: SlurmReader, out: Console, err: Console,
) -> int:
    """``run --loop``: the regular cycle every ``args.loop`` seconds and, with ``hook_spool``
    set, a cycle for the jobs the hook names as their events arrive (``spool.py``), until
    SIGTERM or an interrupt; SIGHUP reads the config again (one with an error is reported and
    the running one kept). An end event stays (tried again each second, for at most
    ``END_RETRY`` seconds) while a connector still has the job's run open: sacct may not hold
    the end yet when the epilog runs, and a stop needs sacct's record. A cycle that delivers
    starts which waited in the outbox is followed at once by a cycle for their jobs: the
    stop of a job that ended meanwhile is planned only once its start is delivered."""
    signals = _Signals()
    connectors = _connectors(args, config, registry, reader)
    not_before: dict[str, float] = {}  # end events kept: name -> when to try again
    next_full = time.time()
    next_retry: float | None = None  # when the outbox's first action is due again
    follow: frozenset[int] = frozenset()  # jobs whose waiting actions the last cycle delivered
    try:
        while not signals.stop:
            if signals.reload:
                signals.reload = False
                try:
                    fresh = _load_config(args.config, registry)
                    fresh_reader = _reader(fresh)
                    fresh_connectors = _connectors(args, fresh, registry, fresh_reader)
                except SyncError as exc:  # a config error: the running config stays
                    err.print(f"[red]config not reloaded:[/] {escape(str(exc))}",
                              highlight=False)
                else:
                    for connector in connectors.values():
                        connector.close()
                    config, reader, connectors = fresh, fresh_reader, fresh_connectors
                    err.print(f"config reloaded: {escape(str(args.config))}", highlight=False)
            options = _options(args, config)
            spool = Spool(config.hook_spool) if config.hook_spool else None
            started = time.time()
            if started >= next_full or (next_retry is not None and started >= next_retry):
                # the regular cycle, the safety net: it covers every event already recorded,
                # and sends what waits in the outbox once it is due (else an action a
                # service refused for a moment would wait for the next interval)
                covered = spool.pending() if spool and _covers_events(options) else None
                code, late = _one_run(args, config, connectors, reader, options, started,
                                      out, err)
                next_full = started + args.loop
                next_retry = _next_retry(config, connectors, started)
                if code != EXIT_LOCKED:
                    follow = late
                if spool is not None and covered is not None and code != EXIT_LOCKED:
                    spool.remove(covered.names)
                    not_before.clear()
            else:
                pending = spool.pending(limit=HOOK_BATCH, skip={
                    n for n, at in not_before.items() if at > started}) if spool else None
                jobs = follow | set(pending.jobs if pending else ())
                if jobs:
                    if pending and pending.jobs:
                        log.info("hook events", extra={"fields": {
                            "jobs": len(pending.jobs), "events": len(pending.names),
                            "oldest": round(started - min(pending.mtimes.values()), 3)}})
                    scoped = dataclasses.replace(options, scope=Scope(
                        job_ids=tuple(sorted(jobs)), limit=options.scope.limit))
                    code, late = _one_run(args, config, connectors, reader, scoped, started,
                                          out, err)
                    if code == EXIT_LOCKED:  # another run (cron, by hand) holds the lock
                        signals.wake.wait(1.0)
                        continue
                    follow = late
                    if spool is not None and pending is not None and pending.jobs:
                        _note_hook_event(config, max(pending.mtimes.values()))
                        kept = _ends_to_retry(config, connectors, pending, started)
                        spool.remove(n for n in pending.names if n not in kept)
                        for name in kept:
                            not_before[name] = time.time() + 1.0
                        for name in [n for n in not_before if n not in kept]:
                            del not_before[name]
                    next_retry = _next_retry(config, connectors, started)
                    continue
            if signals.stop or signals.reload or follow:
                continue
            signals.wake.clear()
            wait = max(0.0, min(next_full, next_retry or next_full) - time.time())
            if spool is not None:
                spool.wait(wait, skip=set(not_before), stop=signals.wake.is_set)
            else:
                signals.wake.wait(wait)
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        for connector in connectors.values():
            connector.close()


def _next_retry(config: Config, connectors: Mapping[str, Connector],
                since: float) -> float | None:
    """When the first action waiting in the outbox is due again, if a cycle that began at
    ``since`` put it off (None: nothing waits, or what waits was due before and that cycle
    did not send it: held by the stop guard or ``--limit``; it waits for the regular cycle,
    so that the loop never spins on it)."""
    with Store.open(_store_path(config), read_only=True) as store:
        due = [at for name in connectors
               if (at := store.next_retry_after(connector=name, after=since)) is not None]
    return min(due, default=None)


def _note_hook_event(config: Config, at: float) -> None:
    """Keep when the newest hook event acted on was recorded (``check`` shows it)."""
    with Store.open(_store_path(config)) as store:
        if (store.noted(HOOK_EVENT) or 0.0) < at:
            store.note(HOOK_EVENT, at)


def _ends_to_retry(config: Config, connectors: Mapping[str, Connector], pending: Pending,
                   now: float) -> set[str]:
    """The end events of ``pending`` to keep: their job's run is still open in a connector
    and the event is younger than ``END_RETRY`` seconds (then the regular cycle takes over)."""
    ends = {job for job, events in pending.jobs.items() if "end" in events}
    if not ends:
        return set()
    open_jobs: set[int] = set()
    with Store.open(_store_path(config), read_only=True) as store:
        for name, connector in connectors.items():
            kinds = connector.kind_table()
            for key in store.open_runs(connector=name, opening=kinds.opening(),
                                       closing=kinds.closing()):
                run = run_key(key)
                if run is not None and run[0] in ends:
                    open_jobs.add(run[0])
    return {f"end.{job}" for job in open_jobs
            if now - pending.mtimes.get(f"end.{job}", now) < END_RETRY}


def _one_run(
    args: argparse.Namespace, config: Config, connectors: dict[str, Connector],
    reader: SlurmReader, options: CycleOptions, started: float, out: Console, err: Console,
) -> tuple[int, frozenset[int]]:
    """One cycle, recorded: its exit code, and the jobs whose actions that waited in the
    outbox it delivered (none for a dry run)."""
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
                        hook=Spool(config.hook_spool).backlog() if config.hook_spool else None,
                    ))
        except LockHeld as exc:
            if not args.loop:
                raise
            err.print(f"[yellow]skipped a cycle:[/] {escape(str(exc))}", highlight=False)
            return EXIT_LOCKED, frozenset()
    if not (args.quiet and report.exit_code == 0 and not report.refused and not report.skipped):
        _print_report(report, args.run_json, args.dry_run, out, err)
    return report.exit_code, (frozenset() if args.dry_run else _delivered_late(report))


def _delivered_late(report: CycleReport) -> frozenset[int]:
    """The jobs of the actions that waited in the outbox and this cycle delivered."""
    delivered = {(o.action.connector, o.action.kind, o.action.key) for o in report.outcomes
                 if o.status.delivered}
    return frozenset(run[0] for a in report.retried
                     if (a.connector, a.kind, a.key) in delivered
                     and (run := run_key(a.key)) is not None)


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
        _print_json(out, {
            "dry_run": dry_run,
            "actions": [entry(a) for a in report.planned],
            "retried": [entry(a) for a in report.retried],
            "facts": [{"connector": o.action.connector, "kind": o.action.kind,
                       "key": o.action.key, "outcome": "would record" if dry_run
                       else o.status.value, "detail": o.detail} for o in report.facts],
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
        })
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
    for fact in report.facts:  # decided with nothing to send: recorded as they are
        shown = "would record" if dry_run else fact.status.value
        table.add_row(*map(escape, (fact.action.connector, fact.action.kind, fact.action.key,
                                    fact.detail, f"{shown} (nothing sent)")))
    if shown_actions or report.facts:
        out.print(table)
    done = sum(o.status.delivered for o in report.outcomes)
    failed = sum(o.status in (Status.TRANSIENT, Status.PERMANENT) for o in report.outcomes)
    out.print(
        f"{len(report.planned)} planned, {len(report.retried)} retried from the outbox, "
        f"{done} done, {failed} failed, "
        f"{len(report.deferred)} deferred by --limit, {len(report.refused)} refused"
        + (f", {len(report.facts)} recorded without sending" if report.facts else ""),
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
    args: argparse.Namespace, config: Config, registry: Mapping[str, type[Connector]],
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
    last_event = None
    if os.path.exists(path):
        with Store.open(path, read_only=True) as store:
            for name in store.connectors():
                rows.append((f"lag of {name}",
                             _behind(store, name, time.time(), config.max_lag_seconds)))
            last_event = store.noted(HOOK_EVENT)
    if config.hook_spool:
        rows += _check_hook(config.hook_spool, reader, last_event)
    for name, connector in _connectors(args, config, registry, reader).items():
        problems = [*connector.warnings, *connector.check()]
        rows.append((f"connector {name}", "; ".join(problems)))
        connector.close()
    if args.run_json:
        _print_json(out, {
            "ok": not any(problem for _, problem in rows),
            "checks": [{"check": what, "ok": not problem, "problem": problem}
                       for what, problem in rows]})
        return EXIT_FAILED if any(problem for _, problem in rows) else EXIT_OK
    table = Table(title="slurm-sync check")
    table.add_column("CHECK")
    table.add_column("RESULT", overflow="fold")
    for what, problem in rows:
        table.add_row(escape(what), f"[red]{escape(problem)}[/]" if problem else "[green]ok[/]")
    out.print(table)
    return EXIT_FAILED if any(problem for _, problem in rows) else EXIT_OK


def _check_hook(spool: str, reader: SlurmReader, last_event: float | None
                ) -> list[tuple[str, str]]:
    """``check``'s rows of the hook: its spool folder, slurm.conf's PrologSlurmctld and
    EpilogSlurmctld, and whether events arrive (the newest one a resident loop acted on)."""
    rows = [(f"hook_spool {spool}", "" if os.path.isdir(spool) else
             f"{spool} is not a folder: create it (docs/hook.md), writable by SlurmUser")]
    try:
        ctld = reader.controller_config()
        missing = [k for k, v in (("PrologSlurmctld", ctld.prolog_slurmctld),
                                  ("EpilogSlurmctld", ctld.epilog_slurmctld)) if not v]
        rows.append((f"hook in slurm.conf ({ctld.prolog_slurmctld or '-'})",
                     f"slurm.conf sets no {' and no '.join(missing)}: add "
                     f"{'=/path/to/slurm-sync-hook and '.join(missing)}=/path/to/slurm-sync-hook"
                     if missing else ""))
    except SlurmError as exc:
        rows.append(("hook in slurm.conf", str(exc)))
    if last_event is None:
        rows.append(("hook events", "no hook event acted on yet: once a job has started, a "
                     "resident `slurm-sync run --loop` takes its event from the spool"))
    else:
        rows.append((f"hook events (newest acted on {_when(int(last_event))})", ""))
    return rows


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


def _hook_behind(spool: str | None, hook: Backlog | None, now: float) -> str:
    """Why the hook's events are not being taken ("" when they are): a resident syncer takes
    each within a second or so, a cron run every minute those recorded before it."""
    if spool is None or hook is None:
        return ""
    if not hook.readable:
        return (f"cannot read {spool} (missing, or not readable by this user): "
                "see docs/hook.md for the folder and its permissions")
    if hook.oldest is not None and now - hook.oldest > HOOK_STALE:
        return (f"{hook.waiting} event(s) waiting, the oldest for {now - hook.oldest:.0f} s: "
                "no syncer is taking them; is `slurm-sync run --loop` running "
                "(contrib/slurm-sync-resident.service)?")
    return ""


def _cmd_status(config: Config, out: Console, as_json: bool = False) -> int:
    """Per connector: watermark, outbox, deliveries, refusals, and how far it is behind."""
    path = _store_path(config)
    now = time.time()
    with Store.open(path, read_only=True) as store:
        last = store.last_run()
        rows = [_status_of(store, name, now, config.max_lag_seconds)
                for name in store.connectors()]
        refusals = [item for name in store.connectors() for item in store.refusals(connector=name)]
    hook = Spool(config.hook_spool).backlog() if config.hook_spool else None
    hook_behind = _hook_behind(config.hook_spool, hook, now)
    if as_json:
        _print_json(out, {
            "state": path, "now": now, "max_lag_seconds": config.max_lag_seconds,
            "connectors": rows,
            "refusals": [{"connector": r.connector, "kind": r.kind, "key": r.key, "at": r.at,
                          "detail": r.detail.get("detail", "")} for r in refusals],
            "last_run": None if last is None else {
                "started": last.started, "ended": last.ended, "exit_code": last.exit_code,
                "actions": sum(c.count for c in last.counts), "skipped_records": last.skipped},
            "hook": None if hook is None else {
                "spool": config.hook_spool, "readable": hook.readable, "waiting": hook.waiting,
                "oldest": hook.oldest, "behind": hook_behind},
        })
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
    if hook is not None and hook.readable:
        out.print(f"hook events waiting in {escape(str(config.hook_spool))}: {hook.waiting}"
                  + (f", the oldest recorded {_ago(now, hook.oldest)}" if hook.oldest else ""),
                  highlight=False)
    if hook_behind:
        out.print(f"[red]behind:[/] hook: {escape(hook_behind)}", highlight=False)
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
    names = list(dict.fromkeys(args.retry_connectors))
    job_ids = tuple(dict.fromkeys(args.retry_jobids))
    since = _epoch(args.retry_since, "--since") if args.retry_since else None
    dry_run = bool(args.retry_dry_run)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``slurm-sync``."""
    # errors and warnings are never folded: a cron mail or a log keeps each on one line
    err = Console(stderr=True, soft_wrap=True)
    words = list(sys.argv[1:] if argv is None else argv)
    args: argparse.Namespace | None = None
    # Every way out is one line and a documented exit code, never a traceback: messages are
    # printed as text (a value in them may look like rich markup, "[/x]").
    logging_ready = False
    try:
        registry = discover()  # a site's connector package that does not load: exit 2
        # Connectors' own commands (and help) need every connector's module; a core command
        # loads only the connectors its config names.
        command = _command_word(words)
        parser = _parser(None if command in CORE_COMMANDS or command == "--version" else registry)
        commands = {name for action in parser._actions
                    if isinstance(action, argparse._SubParsersAction)
                    for name in action.choices}
        args = parser.parse_args(with_command(words, commands))
        out = Console()
        if not out.is_terminal:
            # Piped into grep or a log: do not fold names at 80 columns.
            out = Console(width=200)
        handler = getattr(args, "handler", None)
        if handler is not None:  # a connector's own command
            setup_logging(-1 if args.quiet else args.verbose)
            logging_ready = True
            code: int = handler(CommandContext(args, out, err, registry, args.config))
            return code
        config = _load_config(args.config, registry)
        setup_logging(-1 if args.quiet else args.verbose, config.log_format)
        logging_ready = True
        reader = _reader(config)
        if args.command == "jobs":
            return _cmd_jobs(args, reader, out, err)
        if args.command == "status":
            return _cmd_status(config, out, args.run_json)
        if args.command == "check":
            return _cmd_check(args, config, registry, reader, out)
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
        verbose = args.verbose if args is not None else max(
            (w.count("v") for w in words if w.startswith("-") and set(w[1:]) <= set("vdq")),
            default=0) + 2 * ("-d" in words or "--debug" in words)
        if verbose >= 2:
            if not logging_ready:  # it failed before logging was set up
                setup_logging(2)
            log.debug("internal error", extra={"fields": {"traceback": traceback.format_exc()}})
        return 70


if __name__ == "__main__":
    sys.exit(main())
