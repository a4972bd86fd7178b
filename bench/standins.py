"""Stand-in Slurm commands for benchmarks: scripts that print prepared documents at once, so a
benchmark measures slurm-sync, not slurmctld.

    bin_dir = stand_ins(work, squeue=Path("squeue.json"), sacct=Path("sacct.json"),
                        extra={"sinfo": "exit 0"})

``squeue --version`` answers ``slurm 24.11.5`` (the release the documents' shape comes from).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["stand_ins"]


def stand_ins(work: Path, *, squeue: Path, sacct: Path,
              extra: Mapping[str, str] | None = None) -> Path:
    """Write ``squeue`` and ``sacct`` (and ``extra`` commands, name -> shell body) into
    ``work/bin`` and return that folder."""
    bin_dir = work / "bin"
    bin_dir.mkdir()
    scripts = {
        "squeue": f'case "$1" in --version) echo "slurm 24.11.5";; *) exec cat {squeue};; esac',
        "sacct": f"exec cat {sacct}",
        **(extra or {}),
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return bin_dir
