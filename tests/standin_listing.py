"""Stand-in Slurm readers answer squeue's plain listing from their own full records, as real
squeue would list the same jobs (``as_listed``): a cycle of a connector
that wants full records of new runs only reads the listing first."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.parse import ParseResult
from slurm_sync.slurm.query import JobFilter


def as_listed(job: Job) -> Job:
    """`as_listed(full)` is what squeue's plain listing (``slurm_sync.slurm.listing``) says of
    the job ``full`` is the whole record of: the same identity, state, times and counts,
    nothing of its allocation."""
    pending = job.state is JobState.PENDING
    return Job.from_fields({
        "job_id": job.job_id, "name": job.name, "state": job.state, "cluster": job.cluster,
        "user": job.user, "account": job.account, "partition": job.partition,
        "array_job_id": job.array_job_id, "array_task_id": job.array_task_id,
        "array_tasks_pending": job.array_tasks_pending,
        "start_time": None if pending else job.start_time,
        "end_time": job.end_time if job.state.finished else None,
        "node_count": job.node_count, "cpus": job.cpus, "nodelist": job.nodelist,
        "hosts": job.hosts, "source": "squeue-list",
    })


class ListsFromSqueue:
    """Mixed in before ``SlurmReader``: ``squeue_listing`` is the listed form of ``squeue``."""

    def squeue_listing(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        answer: ParseResult = self.squeue(job_filter)  # type: ignore[attr-defined]
        self.listed_cluster = next((j.cluster for j in answer.jobs if j.cluster), "c")
        return replace(answer, jobs=tuple(as_listed(j) for j in answer.jobs))

    def show_jobs(self, job_ids: Collection[int] | None = None) -> ParseResult:
        """scontrol's full records: the stand-in's squeue records of those ids."""
        ids = tuple(sorted(job_ids or ()))
        answer: ParseResult = self.squeue(  # type: ignore[attr-defined]
            JobFilter(states=("all",), job_ids=ids))
        return replace(answer, jobs=tuple(j for j in answer.jobs if not ids or j.job_id in ids))

    #: Slurm's MinJobAge as the stand-in reports it; None (unknown) keeps every sacct window
    #: asking for running runs too, as a stand-in's squeue may not list ended jobs
    listed_min_job_age: int | None = None

    def min_job_age(self) -> int | None:
        return self.listed_min_job_age

    def cluster_name(self) -> str:
        """The stand-in's jobs name their cluster themselves: the one its listing named."""
        return getattr(self, "listed_cluster", "c")
