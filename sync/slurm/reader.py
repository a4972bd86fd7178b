"""Read Slurm: one call per kind per cycle, parsed into ``Job`` records.

    >>> from slurm_sync.slurm.run import SlurmCommands
    >>> reader = SlurmReader(Runner(SlurmCommands(bin_dir="lab/run/24.11/bin")))
    >>> running = reader.squeue(JobFilter(states=("R",)))  # doctest: +SKIP
    >>> ended = reader.sacct(SacctWindow(start=t0, end=t1))  # doctest: +SKIP

The imperative shell around ``parse.py`` and ``query.py``: it runs the commands, passes the
filters the Slurm version honours, filters the rest after parsing, and fetches node topology
(one ``sinfo`` call) only when a document's core layout needs it. Any failure raises
``SlurmError``; it never returns an empty result in place of an error.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import replace

from slurm_sync.errors import SlurmCommandError, SlurmFormatError
from slurm_sync.slurm.listing import LISTING_ENV, LISTING_FORMAT, parse_listing
from slurm_sync.slurm.model import ExitCode, Job, JobState, NodeTopology, Producer
from slurm_sync.slurm.parse import (
    ParseResult,
    parse_sacct,
    parse_squeue,
    quirks_of,
    resolve_cpu_ids,
)
from slurm_sync.slurm.query import (
    JobFilter,
    SacctWindow,
    listing_args,
    parse_version,
    sacct_args,
    squeue_args,
)
from slurm_sync.slurm.run import Runner
from slurm_sync.slurm.scontrol import PRODUCER, ControllerConfig, parse_show_config, parse_show_job
from slurm_sync.slurm.statesave import JobFiles, read_job_files

__all__ = ["SlurmReader"]

log = logging.getLogger(__name__)

NOT_FINISHED = JobFilter()
ALL_STATES = JobFilter(states=("all",))
#: at most this many jobs' exit codes are read from sacct's text output in one call
TEXT_EXIT_CODES_MAX = 5000
# sacct -n -P -o JobIDRaw,ExitCode: "1234|3:0" (return code : signal)
_EXIT_LINE = re.compile(r"^(?P<id>[0-9]{1,10})\|(?P<code>[0-9]{1,3}):(?P<signal>[0-9]{1,3})$")


class SlurmReader:
    """Reads one Slurm cluster through ``runner``."""

    def __init__(
        self,
        runner: Runner,
        *,
        cluster: str | None = None,
        state_save_location: str | None = None,
    ) -> None:
        self.runner = runner
        self.cluster = cluster
        self.state_save_location = state_save_location
        self._version: tuple[int, int, int] | None = None
        self._config: ControllerConfig | None = None

    def version(self) -> tuple[int, int, int]:
        """Slurm's version, from ``squeue --version`` (asked once per reader)."""
        if self._version is None:
            result = self.runner.run("squeue", ["--version"])
            self._version = parse_version(result.stdout.decode("utf-8", errors="replace"))
        return self._version

    def squeue(self, job_filter: JobFilter = NOT_FINISHED) -> ParseResult:
        """Jobs slurmctld holds that match ``job_filter`` (by default: not finished)."""
        args = squeue_args(job_filter, self.version())
        result = self.runner.run("squeue", args)
        parsed = parse_squeue(result.stdout, cluster=self.cluster)
        jobs = tuple(j for j in parsed.jobs if job_filter.matches(j))
        if any(
            a.cpu_ids is None and a.cores for j in jobs for a in j.allocations
        ):
            jobs = resolve_cpu_ids(jobs, self.topology())
        return replace(parsed, jobs=jobs)

    def show_jobs(self, job_ids: Collection[int] | None = None) -> ParseResult:
        """Jobs slurmctld holds, from ``scontrol show job -d`` text (``scontrol.py``): all of
        them, or those of ``job_ids`` (an array's or het job's id takes its tasks, as squeue's
        ``-j``). One call: ``scontrol show job -d ID`` for one id, else all jobs, of which only
        the wanted records are read; plus one ``sinfo`` for the node layouts when the text has
        allocations. A job id slurmctld no longer holds is simply not in the result. The text
        names no cluster: the jobs carry this reader's ``cluster`` (None when not given).
        """
        wanted = None if job_ids is None else frozenset(job_ids)
        if wanted is not None and not wanted:
            return ParseResult(jobs=(), skipped=(), producer=Producer(plugin=PRODUCER))
        args = ["show", "job", "-d"]
        if wanted is not None and len(wanted) == 1:
            args.append(str(next(iter(wanted))))
        try:
            result = self.runner.run("scontrol", args)
        except SlurmCommandError as exc:
            if len(args) == 4 and exc.returncode == 1 and "invalid job id" in exc.stderr.lower():
                return ParseResult(jobs=(), skipped=(), producer=Producer(plugin=PRODUCER))
            raise
        topology = self.topology() if b"CPU_IDs=" in result.stdout else None
        return parse_show_job(result.stdout, cluster=self.cluster, topology=topology,
                              job_ids=wanted)

    def controller_config(self) -> ControllerConfig:
        """The settings of ``scontrol show config`` the reader uses (asked once per reader)."""
        if self._config is None:
            self._config = parse_show_config(self.runner.run("scontrol", ["show", "config"]).stdout)
        return self._config

    def cluster_name(self) -> str:
        """Slurm's ``ClusterName``: the cluster every JSON record names, so a listed job's
        delivery key is the same as its full record's."""
        return self.controller_config().cluster_name

    def min_job_age(self) -> int | None:
        """Slurm's ``MinJobAge`` in seconds: how long slurmctld keeps an ended job, so that
        squeue still lists it; None when not known or 0 ("never purge", as Slurm reads it)."""
        return self.controller_config().min_job_age

    def squeue_listing(self, job_filter: JobFilter = NOT_FINISHED) -> ParseResult:
        """Jobs slurmctld holds that match ``job_filter``, from squeue's plain listing
        (``listing.py``): ids, states and times without allocations, at a fraction of the cost
        of ``squeue --json`` on big nodes. One call; a failure raises ``SlurmError``."""
        cluster = self.cluster_name()
        result = self.runner.run("squeue", listing_args(job_filter, LISTING_FORMAT),
                                 output_env=LISTING_ENV)
        parsed = parse_listing(result.stdout, cluster=cluster)
        return replace(parsed, jobs=tuple(j for j in parsed.jobs if job_filter.matches(j)))

    def sacct(self, window: SacctWindow, job_filter: JobFilter = ALL_STATES) -> ParseResult:
        """Jobs whose life overlaps ``window``, from the accounting database.

        Where the producer loses exit codes (``quirks_of``: 21.08 to 23.02 say SUCCESS/0 for
        any normal exit), the jobs left with an unknown code get it from one more call, sacct's
        text output, so they read as on later versions (a job that exited 3: return code 3).
        """
        result = self.runner.run("sacct", sacct_args(window, job_filter))
        parsed = parse_sacct(result.stdout, cluster=self.cluster)
        jobs = tuple(j for j in parsed.jobs if job_filter.matches(j))
        if quirks_of(parsed.producer).sacct_exit_code_lost:
            jobs = self._exit_codes_from_text(jobs)
        return replace(parsed, jobs=jobs)

    def _exit_codes_from_text(self, jobs: tuple[Job, ...]) -> tuple[Job, ...]:
        """Ended jobs whose exit code the JSON lost, with sacct's text ``ExitCode``
        (``rc:signal``): one ``sacct -X -n -P -o JobIDRaw,ExitCode -j ...`` for all. A failed
        call leaves them unknown (logged): the JSON answer stands."""
        # an id with two records (a requeued run and the next) is left alone: the text output
        # (without --duplicates) speaks of its last run only
        records = Counter(j.job_id for j in jobs)
        lost = sorted({j.job_id for j in jobs if j.state.finished and records[j.job_id] == 1
                       and j.state is not JobState.COMPLETED and j.exit_code == ExitCode()})
        if not lost:
            return jobs
        lost = lost[:TEXT_EXIT_CODES_MAX]
        try:
            result = self.runner.run("sacct", [
                "-X", "-n", "-P", "-a", "-o", "JobIDRaw,ExitCode",
                "-j", ",".join(map(str, lost))])
        except SlurmCommandError as exc:
            log.warning("sacct text output failed; exit codes stay unknown", extra={"fields": {
                "jobs": len(lost), "error": str(exc)}})
            return jobs
        found: dict[int, ExitCode] = {}
        for line in result.stdout.decode("utf-8", errors="replace").splitlines():
            match = _EXIT_LINE.match(line.strip())
            if match:
                code, sig = int(match["code"]), int(match["signal"])
                found[int(match["id"])] = (ExitCode(None, sig) if sig
                                           else ExitCode(code, None))
        wanted = set(lost)
        return tuple(replace(j, exit_code=found[j.job_id])
                     if j.job_id in wanted and j.job_id in found else j for j in jobs)

    def topology(self) -> dict[str, NodeTopology]:
        """Sockets, cores per socket and threads per core of every node (one ``sinfo`` call)."""
        result = self.runner.run("sinfo", ["-N", "-h", "-o", "%N|%X|%Y|%Z"])
        nodes: dict[str, NodeTopology] = {}
        for line in result.stdout.decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            parts = line.strip().split("|")
            try:
                name, sockets, cores, threads = parts[0], *map(int, parts[1:4])
            except (ValueError, IndexError) as exc:
                raise SlurmFormatError(
                    "sinfo", line, "expected NODE|SOCKETS|CORES|THREADS"
                ) from exc
            nodes[name] = NodeTopology(sockets, cores, threads)
        return nodes

    def batch_script(self, job_id: int) -> str | None:
        """The job's batch script from ``scontrol write batch_script ID -``; None if it has none.

        Works for array tasks and needs no access to the StateSaveLocation.
        """
        try:
            result = self.runner.run("scontrol", ["write", "batch_script", str(job_id), "-"])
        except SlurmCommandError as exc:
            if exc.returncode is not None and "batch" in exc.stderr.lower():
                return None
            raise
        return result.stdout.decode("utf-8", errors="replace")

    def job_files(self, job_id: int, array_job_id: int | None = None, *,
                  environment: bool = True) -> JobFiles:
        """Script and environment (unless ``environment`` is false) from the
        StateSaveLocation, the script from ``scontrol`` when the directory is not there or not
        readable."""
        files = None
        if self.state_save_location:
            files = read_job_files(self.state_save_location, job_id, array_job_id,
                                   environment=environment)
            if files.script is not None:
                return files
        script = self.batch_script(job_id)
        reason = files.reason if files else "no state_save_location configured"
        return JobFiles(
            script=script,
            environment=files.environment if files else None,
            directory=files.directory if files else "",
            reason=f"{reason}; script from scontrol" if script is not None else reason,
        )
