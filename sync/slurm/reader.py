"""Read Slurm: one call per kind per cycle, parsed into ``Job`` records.

    >>> reader = SlurmReader(Runner(SlurmCommands(bin_dir="lab/run/24.11/bin")))
    >>> running = reader.squeue(JobFilter(states=("R",)))  # doctest: +SKIP
    >>> ended = reader.sacct(SacctWindow(start=t0, end=t1))  # doctest: +SKIP

The imperative shell around ``parse.py`` and ``query.py``: it runs the commands, passes the
filters the Slurm version honours, filters the rest after parsing, and fetches node topology
(one ``sinfo`` call) only when a document's core layout needs it. Any failure raises
``SlurmError``; it never returns an empty result in place of an error.
"""

from __future__ import annotations

from dataclasses import replace

from sync.errors import SlurmCommandError, SlurmFormatError
from sync.slurm.model import NodeTopology
from sync.slurm.parse import ParseResult, parse_sacct, parse_squeue, resolve_cpu_ids
from sync.slurm.query import JobFilter, SacctWindow, parse_version, sacct_args, squeue_args
from sync.slurm.run import Runner
from sync.slurm.statesave import JobFiles, read_job_files

__all__ = ["SlurmReader"]

NOT_FINISHED = JobFilter()
ALL_STATES = JobFilter(states=("all",))


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

    def sacct(self, window: SacctWindow, job_filter: JobFilter = ALL_STATES) -> ParseResult:
        """Jobs whose life overlaps ``window``, from the accounting database."""
        result = self.runner.run("sacct", sacct_args(window, job_filter))
        parsed = parse_sacct(result.stdout, cluster=self.cluster)
        return replace(parsed, jobs=tuple(j for j in parsed.jobs if job_filter.matches(j)))

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

    def job_files(self, job_id: int, array_job_id: int | None = None) -> JobFiles:
        """Script and environment from the StateSaveLocation, the script from ``scontrol`` when
        the directory is not there or not readable."""
        files = None
        if self.state_save_location:
            files = read_job_files(self.state_save_location, job_id, array_job_id)
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
