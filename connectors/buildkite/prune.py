"""Build paths a killed job left behind: found (observe), planned (pure), removed (apply).

    gone = find_gone_paths(view, settings.agent, control)         # {slurm job id: mtime}
    actions = plan_prunes(gone, build_root, snapshot, cluster)    # one ``prune`` per folder
    outcome = remove(action, build_root)                          # rm -rf, never via a symlink

Each Slurm job of ours works in ``build_root/job-<slurm id>``, which its script removes when
the agent exits; a job Slurm kills first (a hard cancel, a node failure) leaves it. A folder
goes only when it has not changed for ``PRUNE_AGE_SECONDS``, this cycle's squeue did not show
its job, and a second squeue asked about exactly those ids does not know the job or knows it
as ended. Any doubt keeps the folder.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Mapping

from slurm_sync.actions import Action, Outcome
from slurm_sync.connector import Snapshot, View
from slurm_sync.connectors.buildkite.model import NAME, PRUNE
from slurm_sync.connectors.buildkite.settings import AgentSettings
from slurm_sync.errors import SlurmError
from slurm_sync.slurm.control import SlurmControl, coarse_state

__all__ = ["JOB_PATH", "PRUNE_AGE_SECONDS", "PRUNE_MAX", "find_gone_paths", "plan_prunes",
           "read_build_paths", "remove"]

log = logging.getLogger(__name__)

#: a per-job build path is removed only when its Slurm job is gone and the folder has not
#: changed for this long (a job that started after this cycle's squeue has a newer one)
PRUNE_AGE_SECONDS = 600
PRUNE_MAX = 100  # folders removed per cycle at most
JOB_PATH = re.compile(r"^job-(\d+)\Z")


def find_gone_paths(view: View, agent: AgentSettings,
                    control: SlurmControl | None) -> dict[int, float]:
    """Per-job build paths whose job Slurm no longer runs. Candidates are folders not
    touched for PRUNE_AGE_SECONDS whose job this cycle's squeue did not show; squeue is
    then asked about exactly those ids (whatever their job name), and only an id it does
    not know, or knows as ended, counts as gone. Any doubt keeps the folder."""
    if not view.squeue_ok or control is None:
        return {}
    alive = {j.job_id for j in view.active}
    candidates = {job_id: mtime for job_id, mtime in read_build_paths(agent).items()
                  if job_id not in alive and view.now - mtime >= PRUNE_AGE_SECONDS}
    if not candidates:
        return {}
    try:
        states = control.status(sorted(candidates))
    except SlurmError as exc:
        log.warning("squeue failed; no build path pruned",
                    extra={"fields": {"connector": NAME, "error": str(exc)}})
        return {}
    return {job_id: mtime for job_id, mtime in candidates.items()
            if coarse_state(states.get(job_id)) in ("gone", "finished", "failed", "cancelled")}


def read_build_paths(agent: AgentSettings) -> dict[int, float]:
    """Per-job build paths under build_root (``job-<slurm id>``) and when each last
    changed; none in mode build_path_per build, whose paths are meant to outlive jobs."""
    if agent.per_build:
        return {}
    found = {}
    try:
        with os.scandir(agent.build_root) as entries:
            for entry in entries:
                match = JOB_PATH.match(entry.name)
                if match and entry.is_dir(follow_symlinks=False):
                    found[int(match[1])] = entry.stat(follow_symlinks=False).st_mtime
    except OSError as exc:
        log.warning("cannot list the build root; nothing pruned",
                    extra={"fields": {"path": agent.build_root, "error": exc.strerror}})
    return found


def plan_prunes(gone: Mapping[int, float], build_root: str, snapshot: Snapshot,
                cluster: str | None) -> list[Action]:
    """A removal for each per-job build path whose Slurm job is gone (``gone``: job id ->
    the folder's mtime): what is left when Slurm killed a job before its script's cleanup.
    Pure; at most PRUNE_MAX."""
    actions = []
    for job_id, mtime in sorted(gone.items()):
        key = f"{cluster or '-'}/{job_id}/{int(mtime)}"
        if snapshot.done(PRUNE, key):
            continue
        path = os.path.join(build_root.rstrip("/"), f"job-{job_id}")
        actions.append(Action(NAME, PRUNE, key, {"path": path},
                              f"Slurm job {job_id} is gone; its build path is left behind"))
        if len(actions) >= PRUNE_MAX:
            break
    return actions


def remove(action: Action, build_root: str) -> Outcome:
    """Remove one per-job build path left behind by a job Slurm killed before its script
    could clean up. Only ``job-<id>`` folders right under build_root, never through a
    symlink (shutil.rmtree's fd-based walk on Linux does not follow them)."""
    path = str(action.payload["path"])
    if (os.path.dirname(path) != build_root.rstrip("/")
            or not JOB_PATH.match(os.path.basename(path))):
        return Outcome.permanent(action, f"{path} is not a build path of build_root")
    if not shutil.rmtree.avoids_symlink_attacks:
        return Outcome.permanent(action, "this platform's rmtree may follow symlinks")
    try:
        if os.path.islink(path):
            return Outcome.permanent(action, f"{path} is a symlink; left alone")
        shutil.rmtree(path)
    except FileNotFoundError:
        return Outcome.already_done(action, "already gone")
    except OSError as exc:
        return Outcome.permanent(action, f"cannot remove {path}: {exc.strerror}")
    return Outcome.done(action, f"removed {path}")
