"""Prometheus metrics in node_exporter's textfile format, written after each run.

    write_metrics("/var/lib/node_exporter/textfile/slurm_sync.prom", render_metrics(...))

The file is replaced atomically (written beside it, then renamed), so the collector never reads
half a file. ``render_metrics`` is pure; only ``write_metrics`` touches the disk.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping

from slurm_sync.actions import Outcome
from slurm_sync.slurm.run import CallRecord
from slurm_sync.spool import Backlog
from slurm_sync.store import LagRecord

__all__ = ["render_metrics", "write_metrics"]

log = logging.getLogger(__name__)


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
    lag: Iterable[LagRecord] = (),
    watermarks: Mapping[str, float] | None = None,
    behind: Collection[str] = (),
    slurm_failed: bool = False,
    connector_errors: int = 0,
    skipped_records: int = 0,
    hook: Backlog | None = None,
) -> str:
    """The metrics of one run, as text. The lag figures are what an alert needs: a connector
    whose ended runs are not stopped (and since when), runs Slurm has no record of, stops the
    guard held back, the watermark's time, and whether the connector is behind ``max_lag``; with
    ``hook`` (the spool's backlog when the run ended), how many hook events wait and since when:
    a resident syncer takes each within a second, so an old one means none is running."""
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
    lines += [
        "# HELP slurm_sync_slurm_query_failed 1 when a Slurm query of the last run failed.",
        "# TYPE slurm_sync_slurm_query_failed gauge",
        f"slurm_sync_slurm_query_failed {int(slurm_failed)}",
        "# HELP slurm_sync_connector_errors Connectors whose cycle failed in the last run.",
        "# TYPE slurm_sync_connector_errors gauge",
        f"slurm_sync_connector_errors {connector_errors}",
        "# HELP slurm_sync_skipped_records Slurm records the last run could not read.",
        "# TYPE slurm_sync_skipped_records gauge",
        f"slurm_sync_skipped_records {skipped_records}",
    ]
    records = sorted(lag, key=lambda r: r.connector)
    gauges: tuple[tuple[str, str, Callable[[LagRecord], float]], ...] = (
        ("ended_unstopped", "Tracked runs Slurm says ended that are not stopped.",
         lambda r: r.ended_unstopped),
        ("oldest_unstopped_end_timestamp_seconds",
         "When the oldest ended, not yet stopped run ended (0: none).",
         lambda r: r.oldest_end or 0),
        ("unknown_runs", "Tracked runs Slurm has no record of.", lambda r: r.unknown),
        ("guard_held", "Stops the guard held back in the last cycle.", lambda r: r.refused),
    )
    for metric, text, value in gauges:
        lines += [f"# HELP slurm_sync_{metric} {text}", f"# TYPE slurm_sync_{metric} gauge"]
        lines += [f"slurm_sync_{metric}{_labels(connector=r.connector)} {value(r):.0f}"
                  for r in records]
    lines += [
        "# HELP slurm_sync_watermark_timestamp_seconds Where the next sacct window starts.",
        "# TYPE slurm_sync_watermark_timestamp_seconds gauge",
    ]
    for connector, mark in sorted((watermarks or {}).items()):
        lines.append(f"slurm_sync_watermark_timestamp_seconds{_labels(connector=connector)} "
                     f"{mark:.0f}")
    lines += [
        "# HELP slurm_sync_behind 1 when the connector is further behind than max_lag_seconds.",
        "# TYPE slurm_sync_behind gauge",
    ]
    for connector in sorted({r.connector for r in records} | set(behind)):
        lines.append(f"slurm_sync_behind{_labels(connector=connector)} {int(connector in behind)}")
    if hook is not None:
        lines += [
            "# HELP slurm_sync_hook_events_waiting Hook events in the spool when the run ended.",
            "# TYPE slurm_sync_hook_events_waiting gauge",
            f"slurm_sync_hook_events_waiting {hook.waiting}",
            "# HELP slurm_sync_hook_oldest_event_timestamp_seconds When the oldest waiting hook "
            "event was recorded (0: none).",
            "# TYPE slurm_sync_hook_oldest_event_timestamp_seconds gauge",
            f"slurm_sync_hook_oldest_event_timestamp_seconds {hook.oldest or 0:.0f}",
            "# HELP slurm_sync_hook_spool_readable 0 when the spool folder cannot be read.",
            "# TYPE slurm_sync_hook_spool_readable gauge",
            f"slurm_sync_hook_spool_readable {int(hook.readable)}",
        ]
    return "\n".join(lines) + "\n"


def write_metrics(path: str, text: str) -> bool:
    """Replace ``path`` with ``text`` atomically; False, with an error logged, when it cannot
    be written (the run's own outcome stands: its actions are done and recorded).

    The text is written to a temporary file in the same folder first, named so that
    node_exporter's textfile collector (which reads every ``*.prom`` there, dot files included)
    never reads it half-written: ``.<name>.<random>.tmp``."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        handle, temporary = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as exc:
        log.error("cannot write the metrics file %s: %s", path, exc.strerror,
                  extra={"fields": {"metrics-file": path}})
        return False
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        log.error("cannot write the metrics file %s: %s", path, exc.strerror,
                  extra={"fields": {"metrics-file": path}})
        return False
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return True
