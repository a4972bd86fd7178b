"""Stand-in Slurm readers answer squeue's plain listing from their own full records, as real
squeue would list the same jobs (``slurm_sync.slurm.listing.as_listed``): a cycle of a connector
that wants full records of new runs only reads the listing first."""

from __future__ import annotations

from dataclasses import replace

from slurm_sync.slurm.listing import as_listed
from slurm_sync.slurm.parse import ParseResult
from slurm_sync.slurm.query import JobFilter


class ListsFromSqueue:
    """Mixed in before ``SlurmReader``: ``squeue_listing`` is the listed form of ``squeue``."""

    def squeue_listing(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        answer: ParseResult = self.squeue(job_filter)  # type: ignore[attr-defined]
        return replace(answer, jobs=tuple(as_listed(j) for j in answer.jobs))
