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
from dataclasses import dataclass, field, replace
from typing import IO, Protocol

from slurm_sync.actions import Action, Outcome, RunKey, Status
from slurm_sync.connector import (
    START_KIND,
    STOP_KIND,
    Connector,
    Direction,
    Fact,
    KindTable,
    Plan,
    Scope,
    SlurmNeeds,
    Snapshot,
    View,
    delivery_key,
)
from slurm_sync.errors import SlurmError, SyncError
from slurm_sync.slurm.model import Job
from slurm_sync.slurm.query import WINDOW_ENDS, WINDOW_RUNS, JobFilter, SacctWindow
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.store import Store

__all__ = [
    "DEFAULT_KINDS",
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

EXIT_SLURM, EXIT_CONNECTOR, EXIT_BEHIND = 3, 4, 5
# Tracked runs looked up by job id in one sacct call per cycle, at most (the oldest first).
LOOKUP_CAP = 1000
#: a cycle purges delivery records older than ``CycleOptions.retention`` at most this often (s)
PURGE_EVERY = 3600.0

#: The kinds ``guard`` and ``limit`` assume when not given a connector's: records started
#: and stopped. Every connector declares its own (``Connector.kinds``).
DEFAULT_KINDS = KindTable((START_KIND, STOP_KIND), "default")


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
    max_lag: float | None = 3600.0
    #: how long a finished run's delivery records are kept (seconds); None keeps them for ever
    retention: float | None = 14 * 86400.0


@dataclass
class CycleReport:
    """What one cycle planned, did, and refused; ``exit_code`` per the CLI's documented codes."""

    planned: list[Action] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    deferred: list[Action] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    slurm_errors: list[str] = field(default_factory=list)
    windows: dict[str, SacctWindow] = field(default_factory=dict)
    retried: list[Action] = field(default_factory=list)
    connector_errors: list[str] = field(default_factory=list)
    lag: dict[str, Lag] = field(default_factory=dict)
    behind: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: what plans decided with nothing to send (``Fact``), as the outcomes recorded for them
    facts: list[Outcome] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """3 when a Slurm query failed, whatever else went through; 4 when a connector failed
        or is misconfigured; 5 when a connector is behind more than ``max_lag_seconds``; 1 when
        an action failed or the guard refused some; else 0."""
        if self.slurm_errors:
            return EXIT_SLURM
        if self.connector_errors:
            return EXIT_CONNECTOR
        if self.behind:
            return EXIT_BEHIND
        if self.refused or any(o.status in (Status.TRANSIENT, Status.PERMANENT)
                               for o in (*self.outcomes, *self.facts)):
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


#: Seconds of MinJobAge a window leaves unused (the listing runs after the cycle's clock
#: reading; slurmctld purges an ended job at MinJobAge or later, never sooner).
ENDS_MARGIN = 10


def ends_only(window: SacctWindow | None, now: float, listing: bool,
              min_job_age: int | None) -> bool:
    """Whether the cycle's sacct window may ask for ended runs only (``WINDOW_ENDS``), pure.

    It may when the cycle reads squeue's listing and the window reaches back no further than
    Slurm's ``MinJobAge``: every job that ended in it is still listed, so an empty answer
    while the listing shows such an end is seen to lie (``sacct_suspect``). Otherwise (a first
    run's hour, a window held back by an outage, MinJobAge unknown or shorter than the window,
    a cycle that reads squeue's JSON) it asks for running runs too (``WINDOW_RUNS``): the
    running jobs squeue shows are then what an empty answer is checked against.

        >>> w = SacctWindow(start=1000, end=1121)
        >>> ends_only(w, 1120, True, 300), ends_only(w, 1120, True, 120)
        (True, False)
    """
    if window is None or not listing or not min_job_age:
        return False
    return now - window.start + ENDS_MARGIN <= min_job_age


def with_ends(job_filter: JobFilter) -> JobFilter:
    """``job_filter`` with the ended states added (``WINDOW_ENDS``'s, REQUEUED aside): what the
    listing asks for when the window checks its answer against it. Pure."""
    states = [s.value for s in job_filter.wanted_states()]
    states += [s.value for s in WINDOW_ENDS.wanted_states() if s.finished]
    return replace(job_filter, states=tuple(dict.fromkeys(states)))


def confirmed_ends(view: View) -> frozenset[str]:
    """Delivery keys of the runs Slurm's accounting says ended: a finished sacct record (the
    window's, or the per-job lookup's) with an end time, for a run squeue does not show still
    active. A stop of such a run rests on Slurm's own record of that very run, not on an absence."""
    running = {delivery_key(j) for j in view.active if j.state.active}
    return frozenset(
        key for j in view.ended
        if j.source == "sacct" and j.state.finished and j.end_time and j.start_time
        and (key := delivery_key(j)) not in running
    )


def guard(
    actions: Sequence[Action], view: View, tracked: frozenset[str] | set[str], share: float,
    force: bool, floor: int = 0, kinds: KindTable = DEFAULT_KINDS,
) -> tuple[list[Action], list[str]]:
    """Drop destructive actions a cycle must not take; return (kept, reasons).

    The guard is there for a Slurm that lies (a failed, empty or truncated answer), not for a
    backlog. So:
    - a failed query, or an empty answer while jobs are tracked, refuses every destructive action;
    - a stop of a run sacct reports ended (``confirmed_ends``) always passes: a backlog of ended
      jobs, however large, is Slurm's word run by run;
    - the share guard counts only the other, unconfirmed stops of ``tracked`` keys (started
      earlier and not stopped) and refuses those alone when they are more than ``share`` of the
      tracked jobs (and more than ``floor``), unless forced. An unconfirmed stop becomes
      confirmed once sacct has the run (the engine looks tracked runs up by job id every cycle),
      so no state the guard leaves refuses for ever.
    """
    destructive = [a for a in actions if kinds.destructive(a.kind)]
    if not destructive:
        return list(actions), []
    safe = [a for a in actions if not kinds.destructive(a.kind)]
    if not view.slurm_ok:
        return safe, [
            f"{len(destructive)} stop/cancel action(s) not taken: a Slurm query failed this "
            f"cycle"]
    if tracked and not view.active and not view.ended:
        return safe, [
            f"{len(destructive)} stop/cancel action(s) not taken: Slurm returned no jobs while "
            f"{len(tracked)} are tracked"]
    confirmed = confirmed_ends(view)
    doubtful = [a for a in destructive if a.key in tracked and a.key not in confirmed]
    if force or len(doubtful) <= max(share * len(tracked), floor):
        return list(actions), []
    dropped = {id(a) for a in doubtful}
    return [a for a in actions if id(a) not in dropped], [
        f"{len(doubtful)} stop/cancel action(s) not taken: they stop more than {share:.0%} of "
        f"the {len(tracked)} tracked jobs and sacct does not confirm those runs ended; run "
        f"with --force if this is right"]


def limit(actions: Sequence[Action], cap: int | None,
          kinds: KindTable = DEFAULT_KINDS) -> tuple[list[Action], list[Action]]:
    """``--limit``: at most ``cap`` actions per direction (starts, stops), in planned order
    (connectors plan oldest first). A stop whose start was deferred is deferred with it."""
    if cap is None:
        return list(actions), []
    kept: list[Action] = []
    deferred: list[Action] = []
    counts = {"start": 0, "stop": 0}
    deferred_keys: set[str] = set()
    for action in actions:
        side = "start" if kinds.starts(action.kind) else "stop"
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
    now: float, scope: Scope, errors: list[str], skipped: list[str] | None = None,
    listing: bool = False,
) -> View:
    """The cycle's view: one squeue (its plain listing when ``listing``), one sacct. Records
    the parser skipped are named in ``skipped`` (``squeue record 3 (job 42): why``), so a
    cycle reports them. The window asks for ended runs only where ``ends_only`` allows it; the
    listing then takes ended jobs too, whose end times the view keeps (``listed_ends``)."""
    skipped = [] if skipped is None else skipped
    active: tuple[Job, ...] = ()
    ended: tuple[Job, ...] = ()
    listed_ends: tuple[int, ...] = ()
    squeue_ok = sacct_ok = True
    ends = False
    if window is not None and listing and squeue_filter is not None:
        try:
            ends = ends_only(window, now, listing, reader.min_job_age())
        except SlurmError:
            ends = False  # the listing asks scontrol show config again and says why it failed
    if squeue_filter is not None:
        asked = with_ends(squeue_filter) if ends else squeue_filter
        try:
            answer = reader.squeue_listing(asked) if listing else reader.squeue(asked)
            active = (tuple(j for j in answer.jobs if squeue_filter.matches(j)) if ends
                      else answer.jobs)
            listed_ends = tuple(sorted({j.end_time for j in answer.jobs
                                        if j.state.finished and j.end_time}))
            skipped += [f"squeue record {s.index} (job {s.job_id}): {s.reason}"
                        for s in answer.skipped]
        except SlurmError as exc:
            squeue_ok = False
            errors.append(str(exc))
    if window is not None:
        try:
            sacct_filter = replace(WINDOW_ENDS if ends else WINDOW_RUNS,
                                   job_ids=tuple(scope.job_ids))
            answer = reader.sacct(window, sacct_filter)
            ended = answer.jobs
            skipped += [f"sacct record {s.index} (job {s.job_id}): {s.reason}"
                        for s in answer.skipped]
        except SlurmError as exc:
            sacct_ok = False
            errors.append(str(exc))
    return View(now=now, active=active, ended=ended, window=window,
                squeue_ok=squeue_ok, sacct_ok=sacct_ok, ends_only=ends,
                listed_ends=listed_ends)


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

    kinds = connector.kind_table()

    def apply_group(pool: ThreadPoolExecutor, group: list[Action]) -> list[Outcome]:
        """Batched kinds go to ``apply_many`` once per kind, the rest one by one in the pool."""
        outcomes: list[Outcome] = []
        for kind in dict.fromkeys(a.kind for a in group if kinds[a.kind].batched):
            outcomes += many(kind, [a for a in group if a.kind == kind])
        outcomes += pool.map(safe, [a for a in group if not kinds[a.kind].batched])
        return outcomes

    first = [a for a in actions if kinds.starts(a.kind)]
    rest = [a for a in actions if not kinds.starts(a.kind)]
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


def _in_run(action: Action, options: CycleOptions, kinds: KindTable) -> bool:
    """Whether a queued retry belongs to this run's --direction and --jobid (a queued kind
    the connector no longer declares is left in the outbox, for ``status`` to show)."""
    if action.kind not in kinds:
        return False
    side = kinds[action.kind].side
    if not options.direction.includes(side):
        return False
    if options.scope.job_ids:
        parts = action.key.split("/")
        return len(parts) > 1 and parts[1].isdigit() and int(parts[1]) in options.scope.job_ids
    return True


def _snapshot(store: Store, name: str, kinds: KindTable, job_ids: Iterable[int]) -> Snapshot:
    """What the store says of the cycle's jobs (``job_ids``), of the runs still open, of the
    keys that name no job, and the outbox: its cost follows the cycle, not the history."""
    opened = store.open_runs(connector=name, opening=kinds.opening(), closing=kinds.closing())
    ids = {*job_ids, *(r[0] for k in opened if (r := run_key(k)) is not None)}
    records, outbox = store.snapshot_records(connector=name, job_ids=ids)
    delivered: dict[str, set[str]] = {k: set() for k in kinds}
    failed: dict[str, set[str]] = {k: set() for k in kinds}
    queued: dict[str, set[str]] = {k: set() for k in kinds}
    delivered_at: dict[str, dict[str, float]] = {k: {} for k in kinds if kinds[k].timed}
    for key, kind, status, at in records:
        if kind not in kinds:
            continue
        if status is Status.PERMANENT:
            failed[kind].add(key)
        else:
            delivered[kind].add(key)
            if kind in delivered_at:
                delivered_at[kind][key] = at
    for key, kind in outbox:
        if kind in queued:
            queued[kind].add(key)
    return Snapshot(
        delivered_at=delivered_at,
        delivered={k: frozenset(v) for k, v in delivered.items()},
        queued={k: frozenset(v) for k, v in queued.items()},
        failed={k: frozenset(v) for k, v in failed.items()},
        watermark=store.get_watermark(connector=name),
    )


def _cycle_job_ids(view: View, scope: Scope) -> frozenset[int]:
    """The job ids a cycle can plan for: those of squeue's and sacct's records, and --jobid."""
    return frozenset({j.job_id for j in (*view.active, *view.ended)} | set(scope.job_ids))


def run_key(key: str) -> tuple[int, int] | None:
    """`run_key("c1/42/1790000000")` is ``(42, 1790000000)``: the job id and start time of a
    delivery key (``cluster/job_id/start_time``), None for a key of another form."""
    parts = RunKey.parse(key)
    if parts is None or parts.job_id <= 0 or parts.start <= 0:
        return None
    return parts.job_id, parts.start


def unseen_runs(tracked: Iterable[str], view: View, cap: int = LOOKUP_CAP) -> dict[str, int]:
    """Tracked runs this cycle's answers say nothing about: {key: start time}, oldest first,
    at most ``cap``. Their job ended before the sacct window (a start that waited in the outbox,
    a syncer that was down) or Slurm lost them; the engine asks sacct about them by job id.
    A run squeue lists as ended (within MinJobAge) is asked about too: only sacct's record
    confirms an end to the stop guard, and the window may have passed it."""
    seen = {delivery_key(j) for j in (*view.active, *view.ended)
            if j.source == "sacct" or j.state.active}
    found = {k: r for k in tracked if k not in seen and (r := run_key(k)) is not None}
    oldest = sorted(found.items(), key=lambda kv: (kv[1][1], kv[0]))[:cap]
    return {k: r[1] for k, r in oldest}


@dataclass(frozen=True)
class Lag:
    """How far one connector is behind Slurm after a cycle: tracked runs Slurm says ended that
    are not stopped (and when the oldest ended), tracked runs Slurm has no record of, and the
    destructive actions the guard refused."""

    connector: str
    ended_unstopped: int = 0
    oldest_end: float | None = None
    unknown: int = 0
    refused: int = 0


def lag_of(name: str, tracked: Iterable[str], view: View, refused: int) -> Lag:
    """The ``Lag`` of ``name`` from the keys it still tracks after the cycle (pure)."""
    ends = {delivery_key(j): j.end_time for j in (*view.active, *view.ended)
            if j.state.finished and j.end_time}
    known = {delivery_key(j) for j in (*view.active, *view.ended)}
    keys = [k for k in tracked if run_key(k) is not None]
    ended = [ends[k] for k in keys if k in ends]
    return Lag(
        connector=name,
        ended_unstopped=len(ended),
        oldest_end=float(min(e for e in ended if e is not None)) if ended else None,
        unknown=sum(1 for k in keys if k not in known),
        refused=refused,
    )


def _look_up(reader: SlurmReader, wanted: Mapping[str, int], view: View,
             errors: list[str]) -> View:
    """One sacct call for every tracked run the cycle did not see (by job id, window from the
    oldest start); the runs found join ``view.ended``. A failure is a Slurm error of the cycle."""
    if not wanted:
        return view
    ids = tuple(sorted({run_key(k)[0] for k in wanted}))  # type: ignore[index]
    end = int(view.now) + 1
    window = SacctWindow(start=min(min(wanted.values()) - 1, end), end=end)
    try:
        found = reader.sacct(window, JobFilter(states=("all",), job_ids=ids)).jobs
    except SlurmError as exc:
        errors.append(str(exc))
        return replace(view, sacct_ok=False)
    runs = tuple(j for j in found if delivery_key(j) in wanted)
    log.info("looked up tracked runs outside the window", extra={"fields": {
        "asked": len(wanted), "found": len(runs)}})
    return replace(view, ended=(*view.ended, *runs), looked_up=view.looked_up + len(runs))


def lists_first(needs: Iterable[SlurmNeeds]) -> bool:
    """Whether a cycle reads squeue's plain listing and then the full records it needs, rather
    than every full record (pure): when each connector that reads squeue wants full records
    of new runs only (``detail="new"``), or of a few jobs it names (``"all"`` with names)."""
    readers = [n for n in needs if n.squeue is not None]
    return any(n.detail == "new" for n in readers) and all(
        n.detail == "new" or (n.squeue is not None and n.squeue.names) for n in readers)


def detail_ids(
    listed: Sequence[Job], needs: Mapping[str, SlurmNeeds], snapshots: Mapping[str, Snapshot],
    kinds: Mapping[str, KindTable],
) -> frozenset[int]:
    """The job ids whose full record the cycle must fetch (pure): for a ``detail="all"``
    connector every listed job of its filter; for a ``"new"`` one each listed run not yet
    opened (no opening kind delivered, refused or queued) and each open run squeue lists as
    ended (its stop may need what only the full record says)."""
    ids: set[int] = set()
    for name, need in needs.items():
        if need.squeue is None or name not in snapshots:
            continue
        mine = [j for j in listed if need.squeue.matches(j)]
        if need.detail == "all":
            ids.update(j.job_id for j in mine)
            continue
        snapshot, table = snapshots[name], kinds[name]
        settled = frozenset().union(*(
            snapshot.delivered.get(k, frozenset()) | snapshot.failed.get(k, frozenset())
            | snapshot.queued.get(k, frozenset()) for k in table.opening()))
        tracked = _tracked(snapshot, table)
        for job in mine:
            if not job.start_time:
                continue  # pending: nothing to open yet
            key = delivery_key(job)
            if key not in settled or (job.state.finished and key in tracked):
                ids.add(job.job_id)
    return frozenset(ids)


def _with_details(reader: SlurmReader, view: View, wanted: frozenset[int], errors: list[str],
                  skipped: list[str]) -> View:
    """The listed jobs of ``wanted`` replaced by their full records: one ``scontrol show job
    -d`` (``SlurmReader.show_jobs``; 0.67 s and 29 MB for 11,000 jobs on a 2 x 512-core node,
    where ``squeue --json -j`` took 1.3 s and 274 MB for 100, and 22.05's ignores ``-j``).
    scontrol's text names no cluster: the records take Slurm's ClusterName, as the listing's
    do. A failure is the cycle's Slurm error (squeue not ok): nothing destructive is planned,
    and a listed record is never sent as if it were full."""
    if not wanted:
        return view
    try:
        answer = reader.show_jobs(wanted)
        cluster = reader.cluster_name()
        answer = replace(answer, jobs=tuple(replace(j, cluster=cluster) for j in answer.jobs))
    except SlurmError as exc:
        errors.append(str(exc))
        # as a failed squeue: no view of the active jobs (plans fall back on sacct alone)
        return replace(view, active=(), squeue_ok=False)
    for s in answer.skipped:  # once per cycle, though the listing may have named it too
        line = f"squeue record {s.index} (job {s.job_id}): {s.reason}"
        if line not in skipped:
            skipped.append(line)
    full = {j.job_id: j for j in answer.jobs}
    log.debug("full records fetched", extra={"fields": {
        "listed": len(view.active), "asked": len(wanted), "found": len(full)}})
    return replace(view, active=tuple(full.get(j.job_id, j) for j in view.active))


def _tracked(snapshot: Snapshot, kinds: KindTable = DEFAULT_KINDS) -> frozenset[str]:
    """Runs opened and not closed (``Kind.opens``, ``Kind.closes``)."""
    opened = frozenset().union(*(snapshot.delivered.get(k, frozenset())
                                 for k in kinds.opening()))
    closed = frozenset().union(*(snapshot.delivered.get(k, frozenset())
                                 for k in kinds.closing()))
    return opened - closed


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
    is told about each applied action (the CLI draws a bar from it).

    Each connector's cycle is isolated: an exception in its ``observe``, ``plan`` or ``apply``
    is reported (``report.connector_errors``) and the next connector goes on."""
    report = CycleReport()
    needs: dict[str, SlurmNeeds] = {}
    for name, connector in connectors.items():
        try:
            needs[name] = connector.needs()
        except Exception as exc:
            _connector_failed(report, name, "needs", exc)
    watermarks = {name: store.get_watermark(connector=name) for name in needs}
    windows = {
        name: sacct_window(watermarks[name], now, options.sacct_overlap, options.first_window)
        for name, need in needs.items()
        if need.sacct
    }
    report.windows = dict(windows)
    widest = None
    if windows:
        widest = SacctWindow(min(w.start for w in windows.values()), int(now) + 1)
    listing = lists_first(needs.values())
    view = _view(reader, merged_filter(needs.values(), options.scope), widest, now,
                 options.scope, report.slurm_errors, report.skipped, listing)
    for line in report.skipped:
        log.warning("slurm record skipped", extra={"fields": {"record": line}})
    job_ids = _cycle_job_ids(view, options.scope)
    snapshots = {name: _snapshot(store, name, connectors[name].kind_table(), job_ids)
                 for name in needs}
    if listing and view.squeue_ok:
        details = detail_ids(view.active, needs, snapshots,
                             {n: connectors[n].kind_table() for n in needs})
        view = _with_details(reader, view, details, report.slurm_errors, report.skipped)
    if view.sacct_ok and not options.scope.job_ids:
        wanted: dict[str, int] = {}
        for name in windows:
            tracked = _tracked(snapshots[name], connectors[name].kind_table())
            wanted.update(unseen_runs(tracked, view))
        view = _look_up(reader, dict(sorted(wanted.items(), key=lambda kv: kv[1])[:LOOKUP_CAP]),
                        view, report.slurm_errors)
    for message in report.slurm_errors:
        log.error("slurm query failed", extra={"fields": {"error": message}})
    for name in needs:
        try:
            _connector_cycle(name, connectors[name], snapshots[name], view, store, options,
                             report, windows.get(name), now, progress)
        except Exception as exc:
            _connector_failed(report, name, "cycle", exc)
    if not options.dry_run and options.retention is not None and store.purge_due(
            now=now, every=PURGE_EVERY):
        purged = store.purge(older_than=now - options.retention)
        log.info("purged old deliveries", extra={"fields": {
            "deliveries": purged.deliveries, "runs": purged.runs}})
    return report


def _checked_plan(name: str, kinds: KindTable, plan: Plan | Sequence[Action],
                  report: CycleReport) -> tuple[list[Action], list[Outcome]]:
    """A connector's plan as actions and the outcomes its facts record. An action or fact of
    a kind the connector does not declare is reported as its error and dropped: the engine
    cannot tell which side it is on, nor whether the guard must hold it."""
    actions, facts = (plan.actions, plan.facts) if isinstance(plan, Plan) else (plan, ())
    kept: list[Action] = []
    recorded: list[Outcome] = []
    items: list[Action | Fact] = [*actions, *facts]
    for item in items:
        if item.kind not in kinds:
            try:
                kinds[item.kind]
            except KeyError as exc:
                report.connector_errors.append(f"{name}: {exc.args[0]}")
            continue
        if isinstance(item, Fact):
            action = Action(name, item.kind, item.key, {}, item.detail)
            recorded.append(Outcome.permanent(action, item.detail) if item.refused
                            else Outcome.already_done(action, item.detail))
        else:
            kept.append(item)
    return kept, recorded


def _halt_reason(connector: Connector) -> str | None:
    """What ``apply`` said is wrong with the connector's own configuration, if anything."""
    return connector.halted


def _connector_failed(report: CycleReport, name: str, where: str, exc: BaseException) -> None:
    message = f"{name}: {where} failed: {type(exc).__name__}: {exc}"
    report.connector_errors.append(message)
    log.error("connector failed", extra={"fields": {"connector": name, "error": message}},
              exc_info=log.isEnabledFor(logging.DEBUG))


def _connector_cycle(
    name: str, connector: Connector, snapshot: Snapshot, view: View, store: Store,
    options: CycleOptions, report: CycleReport, window: SacctWindow | None, now: float,
    progress: ProgressSink | None,
) -> None:
    """One connector's part of a cycle: observe, plan, guard and limit (queued retries
    included), apply, record the outcomes, the watermark and the lag."""
    connector.halted = None
    kinds = connector.kind_table()
    due = [] if options.dry_run else [
        e.action for e in store.due(connector=name, now=now)
        if _in_run(e.action, options, kinds)
    ]
    observed = connector.observe(view, snapshot)
    planned, facts = _checked_plan(
        name, kinds, connector.plan(view, snapshot, options.direction, options.scope,
                                    observed=observed), report)
    # --direction holds whatever a plan says: a kind of the other side is not this run's
    planned = [a for a in planned if options.direction.includes(kinds[a.kind].side)]
    facts = [f for f in facts if options.direction.includes(kinds[f.action.kind].side)]
    report.facts.extend(facts)
    tracked = _tracked(snapshot, kinds)
    # Queued retries go through the same guard and --limit as new actions, ahead of them.
    allowed, refused = guard([*due, *planned], view, tracked, options.stop_guard_share,
                             options.force, options.stop_guard_min, kinds)
    kept, deferred = limit(allowed, options.scope.limit, kinds)
    due_ids = {id(a) for a in due}
    held = len(due) + len(planned) - len(allowed)
    report.planned.extend(a for a in kept if id(a) not in due_ids)
    report.retried.extend(a for a in kept if id(a) in due_ids)
    report.deferred.extend(deferred)
    report.refused.extend(f"{name}: {r}" for r in refused)
    if options.dry_run:
        return
    start_kinds = [k for k in kinds if kinds.starts(k)]
    queued_starts = frozenset().union(*(
        snapshot.queued.get(k, frozenset()) - snapshot.delivered.get(k, frozenset())
        for k in start_kinds))
    failed_starts = frozenset().union(*(snapshot.failed.get(k, frozenset())
                                        for k in start_kinds))
    if progress is not None:
        progress.begin(name, len(kept))
    try:
        outcomes = _apply_all(connector, kept, connector.concurrency, queued_starts,
                              progress, failed_starts)
    finally:
        if progress is not None:
            progress.end(name)
    report.outcomes.extend(outcomes)
    for outcome in outcomes:
        level = logging.INFO if outcome.status.delivered else logging.WARNING
        log.log(level, outcome.status.value, extra={"fields": {
            "connector": name, "kind": outcome.action.kind, "job-key": outcome.action.key,
            "detail": outcome.detail}})
    halted = _halt_reason(connector)
    if halted:
        report.connector_errors.append(f"{name}: {halted}")
    # Actions --limit deferred from the outbox stay queued there: only new ones hold the
    # watermark. Stops the guard refused do not: their runs are tracked and looked up by id.
    # A cycle whose squeue failed plans no start of a run sacct alone shows, and a sacct that
    # came back empty while squeue shows runs older than the window cannot be right: in both
    # the watermark stays, or a requeued job's earlier run would fall out of every later window.
    move = (
        window is not None
        and view.slurm_ok
        and not sacct_suspect(view)
        and not options.scope.job_ids
        and not any(id(a) not in due_ids for a in deferred)
        and not halted
    )
    # A stop that waited in the outbox for its start goes with the next cycle once the start
    # is settled (delivered or refused), not after the backoff it built up while waiting.
    settled = {(name, o.action.key) for o in (*outcomes, *facts)
               if kinds.starts(o.action.kind) and o.status is not Status.TRANSIENT
               and o.status is not Status.SKIPPED}
    store.record_outcomes(
        outcomes=[*facts, *outcomes], now=now,
        watermarks={name: float(window.end)} if move and window is not None else None,
        wake=settled, opening=kinds.opening(), closing=kinds.closing(),
    )
    if window is None:
        return
    started = {o.action.key for o in (*facts, *outcomes)
               if o.action.kind in kinds.opening() and o.status.delivered}
    stopped = {o.action.key for o in (*facts, *outcomes)
               if o.action.kind in kinds.closing() and o.status.delivered}
    lag = lag_of(name, (tracked | started) - stopped, view, held)
    report.lag[name] = lag
    store.record_lag(connector=name, now=now, ended_unstopped=lag.ended_unstopped,
                     oldest_end=lag.oldest_end, unknown=lag.unknown, refused=lag.refused)
    late = behind(now, options.max_lag, lag.oldest_end,
                  store.outbox_stats(connector=name).oldest, store.get_watermark(connector=name))
    if late:
        report.behind.append(f"{name}: {late}")


def sacct_suspect(view: View) -> bool:
    """sacct listed nothing though squeue shows a run it must list: one that overlaps the
    window (started before its end, and running or ended after its start), or, where the
    window asked for ended runs only, a job that ended in it. The answer is then one that
    lies (or a database that lags), and the window must not move past it. The runs the lookup
    by job id found are not the window's answer and do not count."""
    if view.window is None or len(view.ended) > view.looked_up:
        return False
    window = view.window
    if view.ends_only:
        return any(window.start <= end <= window.end for end in view.listed_ends)
    return any(j.start_time and j.start_time < window.end
               and (j.end_time is None or j.end_time >= window.start) for j in view.active)


def behind(now: float, max_lag: float | None, oldest_end: float | None,
           oldest_queued: float | None, watermark: float | None) -> str:
    """Why a connector is more than ``max_lag`` seconds behind Slurm, or "" (pure): a run that
    ended and is not stopped, an action waiting in the outbox, or a watermark that stands still."""
    if max_lag is None:
        return ""
    why = []
    if oldest_end is not None and now - oldest_end > max_lag:
        why.append(f"a run that ended {now - oldest_end:.0f} s ago is not stopped")
    if oldest_queued is not None and now - oldest_queued > max_lag:
        why.append(f"an action has waited in the outbox for {now - oldest_queued:.0f} s")
    if watermark is not None and now - watermark > max_lag:
        why.append(f"the sacct watermark is {now - watermark:.0f} s old")
    return "; ".join(why) + (f" (max_lag_seconds {max_lag:.0f})" if why else "")
