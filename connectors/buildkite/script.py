"""The files a Slurm job of ours runs from: its batch script, and an array's map file.

    script = job_script(agent="buildkite-agent", config="/etc/bk.cfg", build_root="/scratch/bk",
                        per_build=False, tags="queue=slurm", ref=ref)
    write_batch(batch_path(batch_dir, batch), refs)         # before sbatch --array
    maps = read_batches(batch_dir, view.active, "buildkite") # which job each task runs

An array job's comment is ``bk-batch:<id>`` and its map file ``batch_dir/<id>.refs`` holds one
``pipeline/build/job`` line per task (line i+1 is task i); a single job's comment is
``bk:pipeline/build/job``.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Iterable, Sequence

from slurm_sync.connectors.buildkite.model import BATCH, BATCH_ID, Ref
from slurm_sync.slurm.model import Job

__all__ = ["batch_path", "job_script", "read_batches", "write_batch"]

log = logging.getLogger(__name__)


def job_script(*, agent: str, config: str, build_root: str, per_build: bool, tags: str,
               ref: Ref | None = None, batch_file: str | None = None) -> str:
    """The batch script of one Slurm job (``ref``) or of an array (``batch_file``: line i+1 is
    the Buildkite job of task i). Every value from config is shell-quoted; the job id is
    checked again inside, so nothing from a pipeline reaches the shell unquoted."""
    if ref is not None:
        lookup = f"REF={shlex.quote(ref.text())}"
    elif batch_file is not None:
        lookup = f'REF=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(batch_file)})'
    else:
        raise ValueError("job_script needs a ref or a batch file")
    path = ('"$BUILD_ROOT/${REF%/*}"' if per_build else '"$BUILD_ROOT/job-$SLURM_JOB_ID"')
    cleanup = "" if per_build else 'rm -rf -- "$BUILD_PATH"\n'
    return f"""#!/bin/bash
# Written by slurm-sync: runs one Buildkite job with buildkite-agent --acquire-job.
set -u
export PATH=/usr/local/bin:/usr/bin:/bin
# scancel --signal=TERM --full reaches us and the agent; pass it on, then wait for the agent.
# Set first: a TERM that comes before the agent starts means it never starts.
pid= stop=
trap 'stop=1; [ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null' TERM INT
{lookup}
JOB=${{REF##*/}}
case "$JOB" in
    ????????-????-????-????-????????????) ;;
    *) echo "slurm-sync: no Buildkite job for this task" >&2; exit 2 ;;
esac
BUILD_ROOT={shlex.quote(build_root)}
BUILD_PATH={path}
mkdir -p -- "$BUILD_PATH" || exit 2
rc=143
if [ -z "$stop" ]; then
    {shlex.quote(agent)} start --acquire-job "$JOB" --disconnect-after-job \\
        --config {shlex.quote(config)} --build-path "$BUILD_PATH" \\
        --name "slurm-$SLURM_JOB_ID" --tags {shlex.quote(tags)}",slurm_job_id=$SLURM_JOB_ID" &
    pid=$!
    [ -z "$stop" ] || kill -TERM "$pid" 2>/dev/null  # the TERM came while it was started
    wait "$pid"; rc=$?
    while kill -0 "$pid" 2>/dev/null; do wait "$pid"; rc=$?; done
fi
# Slurm sends TERM to every process of the job, the clean-up's too (a scancel that races the
# agent's own exit): ignored from here, so an rm cut short does not leave the build path
trap '' TERM INT
# the agent is gone; a wait the TERM cut short said 143, so ask its status once more (bash
# keeps it, unless it reaped the agent while a TERM cut a wait short: then 127 or -1, and the
# 143 stands)
[ -z "$pid" ] || {{ wait "$pid"; r=$?; [ "$r" -lt 0 ] || [ "$r" -ge 127 ] || rc=$r; }}
{cleanup}exit $rc
"""


def batch_path(batch_dir: str, batch: str) -> str:
    """`batch_path("/b", "ab..")` is ``/b/ab...refs``, the map file of array ``batch``."""
    return os.path.join(batch_dir, f"{batch}.refs")


def write_batch(path: str, refs: Sequence[str]) -> None:
    """The map of an array job, written (atomically) before sbatch: line i is task i."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{r}\n" for r in refs))
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_batches(batch_dir: str, jobs: Iterable[Job], job_name: str) -> dict[str, tuple[Ref, ...]]:
    """The map files of the arrays among ``jobs`` (ours: named ``job_name``), by batch id. A
    map that cannot be read, or holds a line that is not a Buildkite job, is left out (and
    logged): its jobs are left alone."""
    ids = {j.comment.strip()[len(BATCH):] for j in jobs
           if j.name == job_name and j.comment.strip().startswith(BATCH)}
    out: dict[str, tuple[Ref, ...]] = {}
    for batch in sorted(ids):
        if not BATCH_ID.match(batch):
            continue
        path = batch_path(batch_dir, batch)
        try:
            with open(path, encoding="utf-8") as handle:
                refs = [Ref.parse(line) for line in handle]
        except OSError as exc:
            log.warning("cannot read a batch map; its jobs are left alone",
                        extra={"fields": {"path": path, "error": exc.strerror}})
            continue
        if all(refs):
            out[batch] = tuple(r for r in refs if r is not None)
    return out
