"""Stopping Slurm jobs of ours: one scancel for the cancels, and the SIGTERMs.

    outcomes = stop_all(control, actions, signal=False)   # scancel 12 13_4 ...
    outcomes = stop_all(control, actions, signal=True)    # scancel --signal=TERM --full ...

The SIGTERMs go through ``SlurmControl.signal``, which Slurm takes at once even for a task of
an array whose other tasks pend, and which says per job whether it was taken: one it refused
is retried (its grace not begun). Each action's payload names its Slurm job as scancel takes
it (``slurm_id``: ``12`` or ``12_4``).
"""

from __future__ import annotations

from collections.abc import Sequence

from slurm_sync.actions import Action, Outcome
from slurm_sync.errors import SlurmError
from slurm_sync.slurm.control import SlurmControl

__all__ = ["stop_all"]


def stop_all(control: SlurmControl, actions: Sequence[Action], *,
             signal: bool) -> list[Outcome]:
    """One outcome per action, in order: done, or transient with Slurm's words."""
    ids = [str(a.payload["slurm_id"]) for a in actions]
    parsed: list[int | str] = [int(i) if i.isdigit() else i for i in ids]
    try:
        if signal:
            refused = control.signal(parsed, "TERM")
        else:
            control.cancel(parsed)
            refused = {}
    except (SlurmError, ValueError) as exc:
        return [Outcome.transient(a, f"scancel: {exc}") for a in actions]
    what = "SIGTERM sent" if signal else "cancelled"
    return [Outcome.transient(a, f"scancel: Slurm job {job_id}: {why}")
            if (why := refused.get(job_id)) is not None
            else Outcome.done(a, f"Slurm job {job_id} {what}")
            for a, job_id in zip(actions, parsed)]
