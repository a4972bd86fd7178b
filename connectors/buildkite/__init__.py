"""Buildkite: scheduled CI jobs become Slurm jobs running ``buildkite-agent start
--acquire-job``; Slurm jobs whose Buildkite job was cancelled are cancelled.

    "connectors": {"buildkite": {
        "mode": "stacks", "queue": "slurm",
        "stacks": {"token": {"file": "/etc/slurm-sync/bk-agent-token"}, "stack_key": "hpc1"},
        "agent": {"config": "/etc/slurm-sync/buildkite-agent.cfg",
                  "build_root": "/scratch/buildkite"},
        "batch_dir": "/scratch/buildkite/batches",
        "policy": {"defaults": {"partition": "ci", "time": "01:00:00", "account": "ci"}}}}

One cycle:

    observe: what Buildkite has (REST: builds listed in scheduled/running/failing within a
             window, paged by Link; Stacks: the queue's scheduled jobs, whether dispatch is
             paused, and get-states for the jobs we run) and which Buildkite job each of our
             Slurm jobs runs (its --comment, or its array's map file): an ``Observed`` value
    plan:    pure: submit scheduled jobs not in Slurm yet (policy-checked, within
             max_in_flight and per-pipeline caps, at most max_submits times each; a refusal is
             a fact, and in mode stacks Buildkite is told); cancel Slurm jobs whose Buildkite
             job was cancelled, timed out or expired, or whose build finished, or, still
             pending, whose job another agent took; a running agent gets SIGTERM first and a
             full cancel after cancel_grace_seconds
    apply:   submits together (Stacks: batch-reserve first), one array job per shape with a
             map file written before sbatch, single submits when Slurm refuses the array; one
             scancel for all cancels; timeline notifications in Stacks mode

Nothing is cancelled on a guess: a cancel needs Buildkite's word for that job, from a listing
or a look-up that got through, and a squeue that got through. The API token never reaches
argv, a job's environment (``--export=NONE``) or a log line; the agent reads its own token
from its config file. One concern per module: see ``connector`` for the map of the package.
``secrets`` (it needs ``cryptography``) is not imported here: the commands load it.
"""

from slurm_sync.connectors.buildkite.connector import BuildkiteConnector
from slurm_sync.connectors.buildkite.model import (
    JOB_STATES,
    BKJob,
    Observed,
    Ref,
    Remote,
    SlurmRun,
    matches_queue,
    runs_of,
)
from slurm_sync.connectors.buildkite.observe import observe
from slurm_sync.connectors.buildkite.plan import plan
from slurm_sync.connectors.buildkite.script import job_script
from slurm_sync.connectors.buildkite.settings import SCHEMA, Settings

__all__ = [
    "JOB_STATES",
    "SCHEMA",
    "BKJob",
    "BuildkiteConnector",
    "Observed",
    "Ref",
    "Remote",
    "Settings",
    "SlurmRun",
    "job_script",
    "matches_queue",
    "observe",
    "plan",
    "runs_of",
]
