"""Buildkite: scheduled CI jobs become Slurm jobs; see ``connector`` for the cycle."""

from slurm_sync.connectors.buildkite.connector import (
    JOB_STATES,
    BKJob,
    BuildkiteConnector,
    Ref,
    Remote,
    job_script,
    matches_queue,
    runs_of,
)

__all__ = ["JOB_STATES", "BKJob", "BuildkiteConnector", "Ref", "Remote", "job_script",
           "matches_queue", "runs_of"]
