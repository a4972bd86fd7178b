"""slurm-sync: keep Slurm and outside services in agreement.

    >>> from slurm_sync.slurm.parse import parse_squeue
    >>> result = parse_squeue(open("tests/fixtures/slurm/24.11/squeue-running.json").read())
    >>> [job.job_id for job in result.jobs][:1]  # doctest: +SKIP
    [12]
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
