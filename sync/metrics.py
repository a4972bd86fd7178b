"""Prometheus metrics in node_exporter's textfile format, written after each run.

    write_metrics("/var/lib/node_exporter/textfile/slurm_sync.prom", render_metrics(...))

The file is replaced atomically (written beside it, then renamed), so the collector never reads
half a file. ``render_metrics`` is pure; only ``write_metrics`` touches the disk.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping

from sync.actions import Outcome
from sync.slurm.run import CallRecord

__all__ = ["render_metrics", "write_metrics"]


def _labels(**labels: str) -> str:
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels.items()
    )
    return "{" + inner + "}" if inner else ""


def render_metrics(
    *,
    finished: float,
    duration: float,
    exit_code: int,
    outcomes: Iterable[Outcome],
    outbox_depth: Mapping[str, int],
    calls: Iterable[CallRecord],
) -> str:
    """The metrics of one run, as text."""
    lines = [
        "# HELP slurm_sync_last_run_timestamp_seconds When the last run ended.",
        "# TYPE slurm_sync_last_run_timestamp_seconds gauge",
        f"slurm_sync_last_run_timestamp_seconds {finished:.0f}",
        "# HELP slurm_sync_last_run_exit_code Exit code of the last run (0 all done).",
        "# TYPE slurm_sync_last_run_exit_code gauge",
        f"slurm_sync_last_run_exit_code {exit_code}",
        "# HELP slurm_sync_cycle_duration_seconds How long the last run took.",
        "# TYPE slurm_sync_cycle_duration_seconds gauge",
        f"slurm_sync_cycle_duration_seconds {duration:.3f}",
        "# HELP slurm_sync_actions Actions of the last run, by connector and outcome.",
        "# TYPE slurm_sync_actions gauge",
    ]
    counts = Counter((o.action.connector, o.status.value) for o in outcomes)
    for (connector, status), count in sorted(counts.items()):
        lines.append(f"slurm_sync_actions{_labels(connector=connector, outcome=status)} {count}")
    lines += [
        "# HELP slurm_sync_outbox_depth Actions waiting for a retry, by connector.",
        "# TYPE slurm_sync_outbox_depth gauge",
    ]
    for connector, depth in sorted(outbox_depth.items()):
        lines.append(f"slurm_sync_outbox_depth{_labels(connector=connector)} {depth}")
    lines += [
        "# HELP slurm_sync_slurm_call_seconds Seconds of the last run's Slurm calls, by command.",
        "# TYPE slurm_sync_slurm_call_seconds gauge",
    ]
    seconds: dict[str, float] = {}
    for call in calls:
        binary = os.path.basename(next((a for a in call.argv if not a.startswith("-")), "?"))
        seconds[binary] = seconds.get(binary, 0.0) + call.seconds
    for command, total in sorted(seconds.items()):
        lines.append(f"slurm_sync_slurm_call_seconds{_labels(command=command)} {total:.3f}")
    return "\n".join(lines) + "\n"


def write_metrics(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".slurm_sync.", suffix=".prom")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
