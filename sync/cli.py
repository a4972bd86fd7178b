"""The ``slurm-sync`` command (also installed as ``sync``): argument parsing and output only.

    $ slurm-sync -c config.json jobs --state R --state PD
    $ slurm-sync jobs --json | jq '.jobs[].job_id'

Exit codes: 0 done; 2 usage or config error (nothing was changed); 3 Slurm unavailable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from sync import __version__
from sync.config import load_config
from sync.errors import ConfigError, SlurmError, SlurmFormatError
from sync.slurm.model import Job
from sync.slurm.query import JobFilter, state_names
from sync.slurm.reader import SlurmReader
from sync.slurm.run import Runner

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SLURM = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slurm-sync",
        description="Keep Slurm and outside services in agreement.",
    )
    parser.add_argument("--version", action="version", version=f"slurm-sync {__version__}")
    parser.add_argument("-c", "--config", help="config.json (default: Slurm commands from PATH)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
            f"{skipped.reason}",
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
        table.add_row(
            job.display_id,
            job.name,
            job.user or "-",
            job.state.value + (f" ({job.reason})" if job.reason else ""),
            job.nodelist or "-",
            str(job.cpus) if job.cpus is not None else "-",
            _gpus(job),
            _when(job.start_time),
            _limit(job.time_limit),
        )
    out.print(table)
    out.print(f"{len(result.jobs)} jobs, {len(result.skipped)} records skipped", highlight=False)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``slurm-sync`` and ``sync``."""
    parser = _parser()
    args = parser.parse_args(argv)
    out = Console()
    if not out.is_terminal:
        # Piped into grep or a log: do not fold names at 80 columns.
        out = Console(width=200)
    err = Console(stderr=True)
    try:
        config = load_config(args.config)
        reader = SlurmReader(
            Runner(config.slurm.commands),
            cluster=config.cluster,
            state_save_location=config.slurm.state_save_location,
        )
        return _cmd_jobs(args, reader, out, err)
    except ConfigError as exc:
        err.print(f"[red]config error:[/] {exc}", highlight=False)
        return EXIT_USAGE
    except SlurmError as exc:
        err.print(f"[red]Slurm unavailable:[/] {exc}", highlight=False)
        return EXIT_SLURM


if __name__ == "__main__":
    sys.exit(main())
