"""One sync cycle: read Slurm once, let each connector plan, guard, limit, apply, record.

    report = run_cycle(reader, store, connectors, options, now=time.time())

    needs ──> one squeue + one sacct (window from the stored watermark) ──> View
      └─> per connector: outbox due ──> plan(view, snapshot) ──> guard ──> limit ──> apply
            └─> store.record_outcomes(outcomes, watermark)   (one transaction per connector)

The pure steps (``merged_filter``, ``sacct_window``, ``guard``, ``limit``) take data and return
data; ``run_cycle`` is the shell that touches Slurm, the services and the store. Invariants:
- a failed or empty Slurm query plans no destructive action (stop, cancel, hold);
- a cycle that would stop more than ``stop_guard_share`` of the tracked jobs (and more than
  ``stop_guard_min``) refuses, unless forced;
- the sacct watermark moves only when every action planned from the window was delivered, failed
  for good, or is durably queued; never in a ``--jobid`` run, a ``--dry-run`` or when --limit
  deferred some actions.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Protocol

from sync.actions import Action, Outcome, Status
from sync.connector import Connector, Direction, Scope, SlurmNeeds, Snapshot, View
from sync.errors import SlurmError, SyncError
from sync.slurm.model import Job
from sync.slurm.query import JobFilter, SacctWindow
from sync.slurm.reader import SlurmReader
from sync.store import Store

__all__ = [
    "DESTRUCTIVE",
    "CycleOptions",
    "CycleReport",
    "LockHeld",
    "ProgressSink",
    "RunLock",
    "guard",
    "limit",
    "merged_filter",
    "run_cycle",
    "sacct_window",
]

log = logging.getLogger(__name__)

DESTRUCTIVE = frozenset({"stop", "cancel", "signal", "hold"})
START_KINDS = frozenset({"start", "submit", "report", "release", "notify", "approve", "limit"})
BASE_KINDS = ("start", "stop", "submit", "cancel", "signal", "hold", "release", "report",
              "notify")


class LockHeld(SyncError):
    """Another run holds the lock in state_dir (exit code 75)."""


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``state_dir/run.lock``, released on exit or crash.

    fcntl's flock is released by the kernel when the process dies, so a killed run never leaves a
    stale lock (a library such as filelock adds nothing here).
    """

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "run.lock")
        self._handle: IO[str] | None = None

    def __enter__(self) -> RunLock:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise LockHeld(f"another run (pid {holder}) holds {self.path}") from exc
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


@dataclass(frozen=True)
class CycleOptions:
    """How one run is limited: --direction, --jobid, --limit, --dry-run, --force."""

    direction: Direction = Direction.BOTH
    scope: Scope = field(default_factory=Scope)
    dry_run: bool = False
    force: bool = False
    stop_guard_share: float = 0.5
    stop_guard_min: int = 10
    sacct_overlap: int = 60
    first_window: int = 3600


@dataclass
class CycleReport:
    """What one cycle planned, did, and refused; ``exit_code`` per the CLI's documented codes."""

    planned: list[Action] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    deferred: list[Action] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    slurm_errors: list[str] = field(default_factory=list)
    windows: dict[str, SacctWindow] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.slurm_errors and not self.outcomes:
            return 3
        if any(o.status in (Status.TRANSIENT, Status.PERMANENT) for o in self.outcomes):
            return 1
        return 0


class ProgressSink(Protocol):
    """Told as a connector's actions are applied, for a progress bar."""

    def begin(self, connector: str, total: int) -> None: ...

    def advance(self, outcome: Outcome) -> None: ...

    def end(self, connector: str) -> None: ...


# --- pure steps --------------------------------------------------------------------------------


def merged_filter(needs: Iterable[SlurmNeeds], scope: Scope) -> JobFilter | None:
    """One squeue filter serving every connector: the union of what they ask for.

    A field one connector leaves open stays open; ``--jobid`` narrows the query to those jobs.
    """
    filters = [n.squeue for n in needs if n.squeue is not None]
    if not filters:
        return None

    def union(values: list[tuple[str, ...]]) -> tuple[str, ...]:
        if any(not v for v in values):
            return ()
        return tuple(dict.fromkeys(x for v in values for x in v))

    states: list[str] = []
    for f in filters:
        states.extend(s.value for s in f.wanted_states())
    return JobFilter(
        states=tuple(dict.fromkeys(states)),
        names=union([f.names for f in filters]),
        users=union([f.users for f in filters]),
        partitions=union([f.partitions for f in filters]),
        job_ids=tuple(scope.job_ids),
    )


def sacct_window(watermark: float | None, now: float, overlap: int, first: int) -> SacctWindow:
    """The window of this cycle: from the watermark less an overlap (sacct's window ends are
    inclusive and slurmdbd commits late) to just past now; the first run looks ``first`` seconds
    back. sacct takes jobs eligible *before* the end, so the end is the next whole second: a job
    eligible in the current second is in this window, not the next."""
    end = int(now) + 1
    start = end - first if watermark is None else int(watermark) - overlap
    return SacctWindow(start=min(start, end), end=end)


def guard(
    actions: Sequence[Action], view: View, tracked: frozenset[str] | set[str], share: float,
    force: bool, floor: int = 0,
) -> tuple[list[Action], list[str]]:
    """Drop destructive actions a cycle must not take; return (kept, reasons).

    ``tracked`` are the keys started earlier and not stopped. The share guard counts only stops
    of those: a job that started and ended between two cycles gets its start and its stop in
    one cycle, and that stop takes nothing away that was tracked. Nor does it refuse a cycle
    that stops at most ``floor`` tracked jobs: on a quiet cluster two of three jobs ending in
    the same minute is normal.
    """
    destructive = [a for a in actions if a.kind in DESTRUCTIVE]
    if not destructive:
        return list(actions), []
    reasons = []
    of_tracked = [a for a in destructive if a.key in tracked]
    if not view.slurm_ok:
        reasons.append(
            f"{len(destructive)} stop/cancel action(s) not taken: a Slurm query failed this cycle"
        )
    elif tracked and not view.active and not view.ended:
        reasons.append(
            f"{len(destructive)} stop/cancel action(s) not taken: Slurm returned no jobs while "
            f"{len(tracked)} are tracked"
        )
    elif len(of_tracked) > max(share * len(tracked), floor) and not force:
        reasons.append(
            f"{len(destructive)} stop/cancel action(s) not taken: {len(of_tracked)} of them stop "
            f"more than {share:.0%} of the {len(tracked)} tracked jobs; run with --force if "
            f"this is right"
        )
    if not reasons:
        return list(actions), []
    return [a for a in actions if a.kind not in DESTRUCTIVE], reasons


def limit(actions: Sequence[Action], cap: int | None) -> tuple[list[Action], list[Action]]:
    """``--limit``: at most ``cap`` actions per direction (starts, stops), in planned order
    (connectors plan oldest first). A stop whose start was deferred is deferred with it."""
    if cap is None:
        return list(actions), []
    kept: list[Action] = []
    deferred: list[Action] = []
    counts = {"start": 0, "stop": 0}
    deferred_keys: set[str] = set()
    for action in actions:
        side = "start" if action.kind in START_KINDS else "stop"
        if counts[side] >= cap or (side == "stop" and action.key in deferred_keys):
            deferred.append(action)
            deferred_keys.add(action.key)
            continue
        counts[side] += 1
        kept.append(action)
    return kept, deferred


# --- the shell ---------------------------------------------------------------------------------


def _view(
    reader: SlurmReader, squeue_filter: JobFilter | None, window: SacctWindow | None,
    now: float, scope: Scope, errors: list[str],
) -> View:
    active: tuple[Job, ...] = ()
    ended: tuple[Job, ...] = ()
    squeue_ok = sacct_ok = True
    if squeue_filter is not None:
        try:
            active = reader.squeue(squeue_filter).jobs
        except SlurmError as exc:
            squeue_ok = False
            errors.append(str(exc))
    if window is not None:
        try:
            sacct_filter = JobFilter(states=("all",), job_ids=tuple(scope.job_ids))
            ended = reader.sacct(window, sacct_filter).jobs
        except SlurmError as exc:
            sacct_ok = False
            errors.append(str(exc))
    return View(now=now, active=active, ended=ended, window=window,
                squeue_ok=squeue_ok, sacct_ok=sacct_ok)


def _apply_all(
    connector: Connector, actions: Sequence[Action], workers: int,
    queued_starts: frozenset[str] = frozenset(), progress: ProgressSink | None = None,
    failed_starts: frozenset[str] = frozenset(),
) -> list[Outcome]:
    """Apply starts, then the rest, each group with bounded concurrency; never raises.

    ``queued_starts`` are keys whose start waits in the outbox: their stops wait too, unless the
    start gets through in this same call. ``failed_starts`` were refused for good: their stops
    are not sent either (the service has nothing to stop).
    """

    def safe(action: Action) -> Outcome:
        try:
            outcome = connector.apply(action)
        except Exception as exc:  # a connector bug must not lose the rest of the batch
            outcome = Outcome.transient(action, f"{type(exc).__name__}: {exc}")
        if progress is not None:
            progress.advance(outcome)
        return outcome

    def many(kind: str, group: list[Action]) -> list[Outcome]:
        try:
            got = list(connector.apply_many(group))
            if len(got) != len(group):
                raise RuntimeError(f"apply_many gave {len(got)} outcomes for {len(group)}")
        except Exception as exc:  # as above: the batch waits in the outbox
            got = [Outcome.transient(a, f"{type(exc).__name__}: {exc}") for a in group]
        for outcome in got:
            if progress is not None:
                progress.advance(outcome)
        return got

    def apply_group(pool: ThreadPoolExecutor, group: list[Action]) -> list[Outcome]:
        """Batched kinds go to ``apply_many`` once per kind, the rest one by one in the pool."""
        outcomes: list[Outcome] = []
        for kind in dict.fromkeys(a.kind for a in group if a.kind in connector.batch_kinds):
            outcomes += many(kind, [a for a in group if a.kind == kind])
        outcomes += pool.map(safe, [a for a in group if a.kind not in connector.batch_kinds])
        return outcomes

    first = [a for a in actions if a.kind in START_KINDS]
    rest = [a for a in actions if a.kind not in START_KINDS]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        outcomes = apply_group(pool, first)
        # A stop never overtakes its start: if the start did not get through, the stop waits
        # in the outbox with it.
        delivered_now = {o.action.key for o in outcomes if o.status.delivered}
        refused = {o.action.key for o in outcomes if o.status is Status.PERMANENT}
        refused |= failed_starts - delivered_now
        unstarted = {o.action.key for o in outcomes if not o.status.delivered} - refused
        unstarted |= queued_starts - delivered_now
        for action in rest:
            if action.key in refused:
                outcomes.append(Outcome.permanent(action, "not sent: its start was refused"))
            elif action.key in unstarted:
                outcomes.append(Outcome.transient(action, "waits for its start to be delivered"))
            else:
                continue
            if progress is not None:
                progress.advance(outcomes[-1])
        outcomes.extend(apply_group(pool, [a for a in rest
                                           if a.key not in unstarted and a.key not in refused]))
    return outcomes


def _in_run(action: Action, options: CycleOptions) -> bool:
    """Whether a queued retry belongs to this run's --direction and --jobid."""
    side = Direction.START if action.kind in START_KINDS else Direction.STOP
    if not options.direction.includes(side):
        return False
    if options.scope.job_ids:
        parts = action.key.split("/")
        return len(parts) > 1 and parts[1].isdigit() and int(parts[1]) in options.scope.job_ids
    return True


def _snapshot(store: Store, name: str, kinds: Iterable[str],
              timed: Iterable[str] = ()) -> Snapshot:
    return Snapshot(
        delivered_at={k: store.delivered_times(connector=name, kind=k) for k in timed},
        delivered={k: store.delivered(connector=name, kind=k) for k in kinds},
        queued={k: store.queued(connector=name, kind=k) for k in kinds},
        failed={k: store.failed(connector=name, kind=k) for k in kinds},
        watermark=store.get_watermark(connector=name),
    )


def run_cycle(
    reader: SlurmReader,
    store: Store,
    connectors: Mapping[str, Connector],
    options: CycleOptions,
    *,
    now: float,
    progress: ProgressSink | None = None,
) -> CycleReport:
    """Run one cycle for ``connectors``; with ``dry_run`` plan and report only. ``progress``
    is told about each applied action (the CLI draws a bar from it)."""
    report = CycleReport()
    needs = {name: c.needs() for name, c in connectors.items()}
    watermarks = {name: store.get_watermark(connector=name) for name in connectors}
    windows = {
        name: sacct_window(watermarks[name], now, options.sacct_overlap, options.first_window)
        for name, need in needs.items()
        if need.sacct
    }
    report.windows = dict(windows)
    widest = None
    if windows:
        widest = SacctWindow(min(w.start for w in windows.values()), int(now) + 1)
    view = _view(reader, merged_filter(needs.values(), options.scope), widest, now,
                 options.scope, report.slurm_errors)
    for message in report.slurm_errors:
        log.error("slurm query failed", extra={"fields": {"error": message}})
    for name, connector in connectors.items():
        kinds = tuple(dict.fromkeys((*BASE_KINDS, *connector.extra_kinds)))
        snapshot = _snapshot(store, name, kinds, connector.timed_kinds)
        due = [] if options.dry_run else [
            e.action for e in store.due(connector=name, now=now) if _in_run(e.action, options)
        ]
        snapshot = connector.observe(view, snapshot)
        planned = connector.plan(view, snapshot, options.direction, options.scope)
        tracked = (snapshot.delivered.get("start", frozenset())
                   - snapshot.delivered.get("stop", frozenset()))
        allowed, refused = guard(planned, view, tracked, options.stop_guard_share, options.force,
                                 options.stop_guard_min)
        kept, deferred = limit(allowed, options.scope.limit)
        report.planned.extend(kept)
        report.deferred.extend(deferred)
        report.refused.extend(f"{name}: {r}" for r in refused)
        if options.dry_run:
            continue
        queued_starts = snapshot.queued.get("start", frozenset()) - snapshot.delivered.get(
            "start", frozenset())
        batch = [*due, *kept]
        if progress is not None:
            progress.begin(name, len(batch))
        try:
            outcomes = _apply_all(connector, batch, connector.concurrency, queued_starts,
                                  progress, snapshot.failed.get("start", frozenset()))
        finally:
            if progress is not None:
                progress.end(name)
        report.outcomes.extend(outcomes)
        for outcome in outcomes:
            level = logging.INFO if outcome.status.delivered else logging.WARNING
            log.log(level, outcome.status.value, extra={"fields": {
                "connector": name, "kind": outcome.action.kind, "job-key": outcome.action.key,
                "detail": outcome.detail}})
        move = (
            name in windows
            and view.sacct_ok
            and not options.scope.job_ids
            and not deferred
            and not refused
        )
        store.record_outcomes(
            outcomes=outcomes, now=now,
            watermarks={name: float(windows[name].end)} if move else None,
        )
    return report

