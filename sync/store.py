"""Durable state of slurm-sync: what was delivered, the sacct watermark, the outbox, the runs.

    >>> import tempfile, os
    >>> from slurm_sync.actions import Action, Outcome
    >>> state_dir = tempfile.mkdtemp()
    >>> store = Store.open(os.path.join(state_dir, "state.db"))
    >>> start = Action(connector="events", kind="start", key="lab2411/42/1790000000",
    ...                payload={"job_id": 42})
    >>> stop = Action(connector="events", kind="stop", key="lab2411/42/1790000000")
    >>> store.record_outcomes(outcomes=[Outcome.done(start), Outcome.transient(stop, "503")],
    ...                       now=1790000100.0, watermarks={"events": 1790000060.0}).queued
    1
    >>> store.delivered(connector="events", kind="start", keys=["lab2411/42/1790000000"])
    frozenset({'lab2411/42/1790000000'})
    >>> [entry.action.kind for entry in store.due(connector="events", now=1790009999.0)]
    ['stop']
    >>> store.get_watermark(connector="events")
    1790000060.0
    >>> store.close()

SQLite behind one class; this is the only module of slurm-sync that writes SQL. Everything is kept
per connector name:

- deliveries: one record per (connector, key, kind), where ``key`` is the Action's key (the engine
  builds it as ``cluster/job_id/start_time``, so a requeued job is a new record) and ``kind`` the
  action kind (a job has a ``start`` delivery and later a ``stop`` one). Status is ``done``,
  ``already_done`` or ``permanent`` (a refused payload: recorded, not retried until
  :meth:`Store.requeue_refused` removes it, ``slurm-sync retry``); a delivered
  record is final and never replaced by a later failure.
- the outbox: actions whose last attempt failed for a transient reason, with their payload, so a
  later run (after a crash too) re-applies them without asking Slurm again.
- the sacct watermark: it never moves backwards; :meth:`Store.record_outcomes` moves it in the
  same transaction as the batch of outcomes of its window (invariant 1 of the design).
- runs: start, end, exit code and outcome counts per connector and status, for ``status``.

Rules at this boundary: keyword-only methods; time is always passed in (``now``), the clock is
never read; one transaction per batch, written only when something changed; ``database is
locked`` is retried here (bounded, with a short backoff) and nowhere else, then raised as a
:class:`StoreError`. ``Store.open(path, read_only=True)`` is for ``--dry-run``: it reads a
snapshot of the file (or an empty store when there is none yet) and every write method raises.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random as _random
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from slurm_sync.actions import Action, Outcome, RunKey, Status
from slurm_sync.errors import SyncError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Backoff",
    "BatchResult",
    "Delivery",
    "LagRecord",
    "Migration",
    "OutboxEntry",
    "OutboxStats",
    "PurgeResult",
    "Run",
    "RunCount",
    "Store",
    "StoreError",
]

T = TypeVar("T")

_KEY_CHUNK = 500  # host parameters per IN (...): below SQLite's old limit of 999
_TEXT_LIMIT = 2000  # details and errors are kept small: a service may answer with a whole page
_MIN_SQLITE = (3, 24, 0)  # INSERT ... ON CONFLICT DO UPDATE


class StoreError(SyncError):
    """The state database cannot be opened, read or written; the message names the file."""


@dataclass(frozen=True)
class Migration:
    """One step of the schema: ``version`` reached after running ``statements`` in order."""

    version: int
    description: str
    statements: tuple[str, ...]
    #: run after the statements, in the same transaction (a data fill SQL cannot express)
    fill: Callable[[sqlite3.Connection], None] | None = None


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="initial schema: deliveries, outbox, watermarks, runs",
        statements=(
            # One row per (connector, job key, action kind). status: done | already_done |
            # permanent; at: when recorded (epoch s); detail: a small JSON object.
            """CREATE TABLE deliveries (
                connector TEXT NOT NULL,
                key       TEXT NOT NULL,
                kind      TEXT NOT NULL,
                status    TEXT NOT NULL CHECK (status IN ('done', 'already_done', 'permanent')),
                at        REAL NOT NULL,
                detail    TEXT NOT NULL DEFAULT '{}',
                PRIMARY KEY (connector, key, kind)
            ) WITHOUT ROWID""",
            # Actions waiting for a retry. payload: the Action payload as JSON; queued_at: first
            # transient failure; attempts: failed attempts so far.
            """CREATE TABLE outbox (
                connector  TEXT NOT NULL,
                key        TEXT NOT NULL,
                kind       TEXT NOT NULL,
                payload    TEXT NOT NULL DEFAULT '{}',
                reason     TEXT NOT NULL DEFAULT '',
                attempts   INTEGER NOT NULL CHECK (attempts >= 1),
                queued_at  REAL NOT NULL,
                next_retry REAL NOT NULL,
                last_error TEXT NOT NULL DEFAULT '',
                PRIMARY KEY (connector, key, kind)
            )""",
            "CREATE INDEX outbox_by_age ON outbox (connector, queued_at)",
            # The start of each connector's next sacct window (epoch s).
            """CREATE TABLE watermarks (
                connector  TEXT PRIMARY KEY,
                value      REAL NOT NULL,
                updated_at REAL NOT NULL
            )""",
            """CREATE TABLE runs (
                id        INTEGER PRIMARY KEY,
                started   REAL NOT NULL,
                ended     REAL NOT NULL,
                exit_code INTEGER NOT NULL
            )""",
            """CREATE TABLE run_counts (
                run_id    INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
                connector TEXT NOT NULL,
                status    TEXT NOT NULL,
                count     INTEGER NOT NULL CHECK (count >= 0),
                PRIMARY KEY (run_id, connector, status)
            ) WITHOUT ROWID""",
        ),
    ),
    Migration(
        version=2,
        description="lag: how far each connector is behind Slurm after its last cycle",
        statements=(
            # ended_unstopped: tracked runs Slurm says ended that are not stopped; oldest_end:
            # the oldest of their ends; unknown: tracked runs Slurm has no record of; refused:
            # destructive actions the stop guard held back; at: when the cycle ran.
            """CREATE TABLE lag (
                connector       TEXT PRIMARY KEY,
                at              REAL NOT NULL,
                ended_unstopped INTEGER NOT NULL CHECK (ended_unstopped >= 0),
                oldest_end      REAL,
                unknown         INTEGER NOT NULL CHECK (unknown >= 0),
                refused         INTEGER NOT NULL CHECK (refused >= 0)
            )""",
        ),
    ),
    Migration(
        version=3,
        description="runs: how many Slurm records the run could not read",
        statements=("ALTER TABLE runs ADD COLUMN skipped INTEGER NOT NULL DEFAULT 0",),
    ),
    Migration(
        version=4,
        description="a bounded snapshot: deliveries by job id and age, the open runs, meta",
        statements=(
            # job_id: the Slurm job id of a ``cluster/job_id/start`` key (RunKey), NULL for a
            # key of another form. A cycle reads the records of its own jobs only.
            "ALTER TABLE deliveries ADD COLUMN job_id INTEGER",
            "CREATE INDEX deliveries_by_job ON deliveries (connector, job_id)",
            "CREATE INDEX deliveries_by_age ON deliveries (at)",
            # Runs a connector opened (a delivered kind with Kind.opens) and has not closed.
            """CREATE TABLE open_runs (
                connector TEXT NOT NULL,
                key       TEXT NOT NULL,
                job_id    INTEGER,
                PRIMARY KEY (connector, key)
            ) WITHOUT ROWID""",
            # Which opening and closing kinds open_runs was built with, per connector: when a
            # connector's kinds change, its open runs are rebuilt from the deliveries.
            """CREATE TABLE open_runs_kinds (
                connector TEXT PRIMARY KEY,
                kinds     TEXT NOT NULL
            )""",
            """CREATE TABLE meta (
                name  TEXT PRIMARY KEY,
                value REAL NOT NULL
            )""",
        ),
        fill=lambda conn: _fill_job_ids(conn),
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class Backoff:
    """When a transiently failed action is retried: exponential, jittered, capped.

    `b.delay(attempts, rand, retry_after)` is ``min(cap, base * factor ** (attempts - 1))``
    shortened by up to ``jitter`` of itself (``rand`` in [0, 1) picks how much), or the service's
    ``retry_after`` when that is larger (trusted up to ``max_retry_after``).
    """

    base: float = 30.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: float = 0.2
    max_retry_after: float = 86400.0

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap and math.isfinite(self.cap)):
            raise ValueError(f"backoff needs 0 < base <= cap < inf, got {self.base}, {self.cap}")
        if not 1 <= self.factor < math.inf:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"backoff jitter must be in [0, 1), got {self.jitter}")
        if not 0 <= self.max_retry_after < math.inf:
            raise ValueError(f"max_retry_after must be >= 0, got {self.max_retry_after}")

    def delay(self, attempts: int, rand: float, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1 for the first)."""
        exponent = min(max(attempts, 1) - 1, 64)
        raw = min(self.cap, self.base * self.factor**exponent)
        delay = raw * (1.0 - self.jitter * min(max(rand, 0.0), 1.0))
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


@dataclass(frozen=True)
class Delivery:
    """A recorded delivery (or permanent failure) of one action kind for one job key."""

    connector: str
    key: str
    kind: str
    status: Status
    at: float
    detail: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class OutboxEntry:
    """An action waiting for a retry: ``action`` is rebuilt as it was planned."""

    action: Action
    attempts: int
    queued_at: float
    next_retry: float
    last_error: str


@dataclass(frozen=True)
class OutboxStats:
    """`depth` entries wait for ``connector``; the oldest was queued at ``oldest`` (None: empty)."""

    connector: str
    depth: int
    oldest: float | None
    next_retry: float | None


@dataclass(frozen=True)
class BatchResult:
    """What :meth:`Store.record_outcomes` wrote: counts, and whose watermarks moved."""

    delivered: int = 0
    failed: int = 0
    queued: int = 0
    skipped: int = 0
    watermarks_moved: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunCount:
    """How many outcomes of ``status`` one connector had in one run."""

    connector: str
    status: Status
    count: int

    @classmethod
    def from_outcomes(cls, outcomes: Iterable[Outcome]) -> tuple[RunCount, ...]:
        """`RunCount.from_outcomes(outcomes)` counts them per connector and status, sorted."""
        counts: dict[tuple[str, Status], int] = {}
        for outcome in outcomes:
            slot = (outcome.action.connector, outcome.status)
            counts[slot] = counts.get(slot, 0) + 1
        return tuple(cls(c, s, n) for (c, s), n in sorted(counts.items()))


@dataclass(frozen=True)
class Run:
    """One recorded run of slurm-sync."""

    id: int
    started: float
    ended: float
    exit_code: int
    counts: tuple[RunCount, ...] = ()
    skipped: int = 0

    def count(self, *, connector: str | None = None, status: Status | None = None) -> int:
        """`run.count(connector=..., status=...)` sums the counts matching both (None: any)."""
        return sum(
            c.count
            for c in self.counts
            if (connector is None or c.connector == connector)
            and (status is None or c.status is status)
        )


@dataclass(frozen=True)
class LagRecord:
    """How far a connector was behind Slurm after its last cycle (see ``record_lag``)."""

    connector: str
    at: float
    ended_unstopped: int
    oldest_end: float | None
    unknown: int
    refused: int


@dataclass(frozen=True)
class PurgeResult:
    """How many delivery records and runs :meth:`Store.purge` removed."""

    deliveries: int = 0
    runs: int = 0


class Store:
    """The state database. Open it with :meth:`Store.open`; use it as a context manager.

    Safe to share between threads (calls are serialized). Every method is keyword-only.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        *,
        path: str,
        read_only: bool,
        backoff: Backoff,
        rand: Callable[[], float],
        lock_retries: int,
        lock_backoff: float,
        sleep: Callable[[float], None],
    ) -> None:
        """Use :meth:`Store.open` or :meth:`Store.memory`; this takes an opened connection."""
        self._conn = connection
        self.path = path
        self._read_only = read_only
        self._backoff = backoff
        self._rand = rand
        self._lock_retries = lock_retries
        self._lock_backoff = lock_backoff
        self._sleep = sleep
        self._mutex = threading.RLock()

    # ----------------------------------------------------------------- opening and closing

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        backoff: Backoff | None = None,
        rand: Callable[[], float] | None = None,
        busy_timeout: float = 2.0,
        lock_retries: int = 4,
        lock_backoff: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Store:
        """`Store.open(path)` opens (creating, migrating) the database at ``path``.

        The parent directories it creates get mode 0700, a new database file 0600. WAL journal,
        ``synchronous=NORMAL``, foreign keys on; migrations run one transaction each. A database
        written by a newer slurm-sync is refused. ``read_only=True`` changes nothing on disk: it
        works on an in-memory snapshot of the file (migrated in memory if it is older), or on an
        empty store if there is no file yet, and every write method raises :class:`StoreError`.
        ``rand`` (values in [0, 1)) drives the backoff jitter; ``sleep`` the lock retries.
        """
        if lock_retries < 0 or lock_backoff < 0 or busy_timeout < 0:
            raise ValueError("lock_retries, lock_backoff and busy_timeout must be >= 0")
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StoreError(
                f"SQLite {sqlite3.sqlite_version} is too old for the state database: "
                f"{'.'.join(map(str, _MIN_SQLITE))} or later is needed"
            )
        where = os.fspath(path)
        store = cls(
            sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False),
            path=where,
            read_only=read_only,
            backoff=backoff or Backoff(),
            rand=rand or _random.Random().random,
            lock_retries=lock_retries,
            lock_backoff=lock_backoff,
            sleep=sleep,
        )
        try:
            if read_only:
                store._open_snapshot(Path(where), busy_timeout)
            else:
                store._open_file(Path(where), busy_timeout)
        except BaseException:
            store._conn.close()
            raise
        return store

    @classmethod
    def memory(
        cls, *, backoff: Backoff | None = None, rand: Callable[[], float] | None = None
    ) -> Store:
        """`Store.memory()` is an empty writable store that lives in memory (for tests)."""
        store = cls(
            sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False),
            path=":memory:",
            read_only=False,
            backoff=backoff or Backoff(),
            rand=rand or _random.Random().random,
            lock_retries=0,
            lock_backoff=0.0,
            sleep=time.sleep,
        )
        store._conn.execute("PRAGMA foreign_keys = ON")
        store._migrate()
        return store

    def _open_file(self, path: Path, busy_timeout: float) -> None:
        _make_parents(path.parent)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot create the state database {path}: {exc}") from exc
        else:
            os.close(fd)
            os.chmod(path, 0o600)  # whatever the umask
        self._conn.close()
        try:
            self._conn = sqlite3.connect(
                str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the state database {path}: {exc}") from exc

        def pragmas() -> None:
            self._conn.execute("PRAGMA journal_mode = WAL").fetchone()
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")

        self._retrying("setting up", pragmas)
        self._migrate()

    def _open_snapshot(self, path: Path, busy_timeout: float) -> None:
        # A dry run reads a copy in memory. A plain read-only SQLite connection to a WAL
        # database would leave -wal and -shm files behind; when no -wal exists, no connection
        # is open and the main file holds every commit, so it is read as immutable.
        if path.exists():
            wal = Path(f"{path}-wal")
            uri = path.resolve().as_uri() + ("?mode=ro" if wal.exists() else "?immutable=1")
            try:
                source = sqlite3.connect(
                    uri, uri=True, timeout=busy_timeout, isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the state database {path}: {exc}") from exc
            try:
                self._retrying("reading", lambda: self._check_version(source))
                self._retrying("reading", lambda: source.backup(self._conn))
            finally:
                source.close()
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._migrate()  # in memory only: a dry run of an upgrade
        self._conn.execute("PRAGMA query_only = ON")

    def close(self) -> None:
        """`store.close()` closes the database; uncommitted work (there is none) is dropped."""
        with self._mutex:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def read_only(self) -> bool:
        """`store.read_only` is true for a dry-run store, whose write methods raise."""
        return self._read_only

    @property
    def schema_version(self) -> int:
        """`store.schema_version` is the schema version of the open database."""
        return self._read("reading", _version)

    # ----------------------------------------------------------------------- migrations

    def _check_version(self, conn: sqlite3.Connection) -> int:
        found = _version(conn)
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"the state database {self.path} has schema version {found}, newer than "
                f"version {SCHEMA_VERSION} that this slurm-sync supports: upgrade slurm-sync "
                f"or point state_dir elsewhere"
            )
        return found

    def _migrate(self) -> None:
        """Applies the missing migrations, one transaction each; refuses a newer database."""
        current = self._retrying("reading", lambda: self._check_version(self._conn))
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue  # no write lock is taken when there is nothing to do

            def step(conn: sqlite3.Connection, migration: Migration = migration) -> None:
                if self._check_version(conn) >= migration.version:
                    return  # already there (another process may have just done it)
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    " version INTEGER PRIMARY KEY, description TEXT NOT NULL)"
                )
                for statement in migration.statements:
                    conn.execute(statement)
                if migration.fill is not None:
                    migration.fill(conn)
                conn.execute(
                    "INSERT INTO schema_version (version, description) VALUES (?, ?)",
                    (migration.version, migration.description),
                )

            self._retrying(
                f"migrating to schema version {migration.version}",
                functools.partial(self._transaction, step),
            )

    # ----------------------------------------------------------------------- deliveries

    def delivered(
        self, *, connector: str, kind: str, keys: Iterable[str] | None = None
    ) -> frozenset[str]:
        """`store.delivered(connector=, kind=, keys=)` is the keys whose ``kind`` was delivered.

        Only among ``keys`` when given; ``done`` and ``already_done`` count as delivered.
        """
        return self._keys("deliveries", connector, kind, keys, "status <> 'permanent'")

    def failed(
        self, *, connector: str, kind: str, keys: Iterable[str] | None = None
    ) -> frozenset[str]:
        """`store.failed(connector=, kind=, keys=)` is the keys whose ``kind`` failed for good."""
        return self._keys("deliveries", connector, kind, keys, "status = 'permanent'")

    def queued(
        self, *, connector: str, kind: str, keys: Iterable[str] | None = None
    ) -> frozenset[str]:
        """`store.queued(connector=, kind=, keys=)` is the keys with ``kind`` in the outbox."""
        return self._keys("outbox", connector, kind, keys, "1")

    def deliveries(
        self, *, connector: str, keys: Iterable[str] | None = None, kind: str | None = None
    ) -> tuple[Delivery, ...]:
        """`store.deliveries(connector=, keys=, kind=)` is the records, by key then kind."""
        columns = "connector, key, kind, status, at, detail"
        kinds = "" if kind is None else " AND kind = ?"
        head = (connector,) if kind is None else (connector, kind)

        def read(conn: sqlite3.Connection) -> list[Any]:
            if keys is None:
                return conn.execute(
                    f"SELECT {columns} FROM deliveries WHERE connector = ?{kinds}", head
                ).fetchall()
            rows: list[Any] = []
            for chunk in _chunks(keys):
                rows += conn.execute(
                    f"SELECT {columns} FROM deliveries WHERE connector = ?{kinds}"
                    f" AND key IN ({', '.join('?' * len(chunk))})",
                    (*head, *chunk),
                ).fetchall()
            return rows

        rows = self._read("reading deliveries", read)
        return tuple(
            Delivery(c, k, kd, Status(s), at, json.loads(d))
            for c, k, kd, s, at, d in sorted(rows, key=lambda r: (r[1], r[2]))
        )

    def delivery_counts(self, *, connector: str) -> dict[Status, int]:
        """`store.delivery_counts(connector=)` is how many records end in each status."""

        def read(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT status, COUNT(*) FROM deliveries WHERE connector = ? GROUP BY status",
                (connector,),
            ).fetchall()

        return {Status(s): n for s, n in self._read("counting deliveries", read)}

    def refusals(self, *, connector: str, limit: int = 10) -> tuple[Delivery, ...]:
        """`store.refusals(connector=)` is the newest actions the service refused for good."""

        def read(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT connector, key, kind, status, at, detail FROM deliveries"
                " WHERE connector = ? AND status = 'permanent' ORDER BY at DESC, key LIMIT ?",
                (connector, limit),
            ).fetchall()

        return tuple(Delivery(c, k, kd, Status(s), at, json.loads(d))
                     for c, k, kd, s, at, d in self._read("reading refusals", read))

    def requeue_refused(
        self, *, connector: str | None = None, job_ids: Collection[int] = (),
        since: float | None = None, dry_run: bool = False,
    ) -> tuple[Delivery, ...]:
        """`store.requeue_refused(connector=, job_ids=, since=)` gives the actions refused for
        good another chance; returns their records, by connector, key and kind.

        A refused record matches when it is ``connector``'s (any when None), its key names one
        of ``job_ids`` (``cluster/job_id/start``; any job when empty) and it was recorded at or
        after ``since``. The other refused records of a matching (connector, key) go with it: a
        refused start takes along the stop that was not sent because of it. A refused action's
        payload is not kept, so the records are removed: the next cycle plans those actions
        afresh from what Slurm says, with the configuration as it is then. The connector's
        watermark goes back to the oldest requeued run's start, so its next sacct window holds
        every requeued run, ended or not (its only backward move). One transaction;
        ``dry_run`` changes nothing and returns what would go (it works on a read-only store).
        """
        if since is not None:
            _check_time(since, "since")
        wanted = frozenset(job_ids)

        def matching(conn: sqlite3.Connection) -> list[Any]:
            sql = ("SELECT connector, key, kind, status, at, detail FROM deliveries"
                   " WHERE status = 'permanent'")
            params: list[Any] = []
            if connector is not None:
                sql += " AND connector = ?"
                params.append(connector)
            rows = conn.execute(sql, params).fetchall()
            chosen = {(c, k) for c, k, _, _, at, _ in rows
                      if (since is None or at >= since)
                      and (not wanted or _job_id_of(k) in wanted)}
            return sorted((r for r in rows if (r[0], r[1]) in chosen),
                          key=lambda r: (r[0], r[1], r[2]))

        def requeue(conn: sqlite3.Connection) -> list[Any]:
            rows = matching(conn)
            conn.executemany(
                "DELETE FROM deliveries WHERE connector = ? AND key = ? AND kind = ?"
                " AND status = 'permanent'", [(c, k, kd) for c, k, kd, *_ in rows])
            # The one time a watermark goes back: the next sacct window must reach the oldest
            # requeued run again, or a run that ended before the window would not be planned.
            oldest: dict[str, int] = {}
            for name, key, *_ in rows:
                start = _start_of(key)
                if start is not None:
                    oldest[name] = min(start, oldest.get(name, start))
            conn.executemany(
                "UPDATE watermarks SET value = ? WHERE connector = ? AND value > ?",
                [(float(start), name, float(start)) for name, start in oldest.items()])
            return rows

        if dry_run:
            rows = self._read("reading refusals", matching, snapshot=True)
        else:
            self._check_writable("requeue_refused")
            rows = self._write("requeueing refused actions", requeue)
        return tuple(Delivery(c, k, kd, Status(s), at, json.loads(d))
                     for c, k, kd, s, at, d in rows)

    def _keys(
        self, table: str, connector: str, kind: str, keys: Iterable[str] | None, where: str
    ) -> frozenset[str]:
        def read(conn: sqlite3.Connection) -> frozenset[str]:
            sql = f"SELECT key FROM {table} WHERE connector = ? AND kind = ? AND {where}"
            if keys is None:
                return frozenset(r[0] for r in conn.execute(sql, (connector, kind)))
            found: set[str] = set()
            for chunk in _chunks(keys):
                found.update(
                    r[0]
                    for r in conn.execute(
                        f"{sql} AND key IN ({', '.join('?' * len(chunk))})",
                        (connector, kind, *chunk),
                    )
                )
            return frozenset(found)

        return self._read(f"reading {table}", read)

    def open_runs(
        self, *, connector: str, opening: Collection[str], closing: Collection[str]
    ) -> frozenset[str]:
        """`store.open_runs(connector=, opening=, closing=)` is the keys of the runs the
        connector opened (an ``opening`` kind delivered) and has not closed (no ``closing`` kind
        delivered). Kept up to date by :meth:`record_outcomes`, so a cycle does not scan every
        delivery ever made; rebuilt from the deliveries (once) when the kinds differ from those
        it was built with, or when outcomes were recorded without them."""
        signature = _kinds_signature(opening, closing)

        def built(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT kinds FROM open_runs_kinds WHERE connector = ?",
                               (connector,)).fetchone()
            return row is not None and row[0] == signature

        def read(conn: sqlite3.Connection) -> frozenset[str]:
            return frozenset(r[0] for r in conn.execute(
                "SELECT key FROM open_runs WHERE connector = ?", (connector,)))

        def rebuild(conn: sqlite3.Connection) -> frozenset[str]:
            if not built(conn):
                conn.execute("DELETE FROM open_runs WHERE connector = ?", (connector,))
                conn.executemany(
                    "INSERT INTO open_runs (connector, key, job_id) VALUES (?, ?, ?)",
                    [(connector, key, _job_id_of(key))
                     for key in _scan_open(conn, connector, opening, closing)])
                conn.execute("INSERT INTO open_runs_kinds (connector, kinds) VALUES (?, ?)"
                             " ON CONFLICT (connector) DO UPDATE SET kinds = excluded.kinds",
                             (connector, signature))
            return read(conn)

        if self._read("reading open runs", built):
            return self._read("reading open runs", read)
        if self._read_only:  # a dry run computes them without writing
            return self._read("reading open runs",
                              lambda conn: _scan_open(conn, connector, opening, closing))
        return self._write("rebuilding open runs", rebuild)

    def snapshot_records(
        self, *, connector: str, job_ids: Collection[int]
    ) -> tuple[tuple[tuple[str, str, Status, float], ...], tuple[tuple[str, str], ...]]:
        """`store.snapshot_records(connector=, job_ids=)` is what a cycle's snapshot needs:
        the delivery records (key, kind, status, at) of ``job_ids``' runs and of every key that
        names no job (a connector's own keys), and the outbox's (key, kind). One read
        transaction; its cost follows the cycle's jobs, not the deliveries ever made."""
        ids = sorted(set(job_ids))

        def read(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            # INDEXED BY: without statistics SQLite would take the primary key's (connector)
            # prefix and read every record of the connector, which is what this avoids
            head = ("SELECT key, kind, status, at FROM deliveries INDEXED BY deliveries_by_job"
                    " WHERE connector = ?")
            rows = conn.execute(f"{head} AND job_id IS NULL", (connector,)).fetchall()
            for start in range(0, len(ids), _KEY_CHUNK):
                chunk = ids[start:start + _KEY_CHUNK]
                rows += conn.execute(
                    f"{head} AND job_id IN ({', '.join('?' * len(chunk))})",
                    (connector, *chunk)).fetchall()
            queued = conn.execute("SELECT key, kind FROM outbox WHERE connector = ?",
                                  (connector,)).fetchall()
            return rows, queued

        rows, queued = self._read("reading the snapshot", read, snapshot=True)
        return (tuple((k, kd, Status(st), float(at)) for k, kd, st, at in rows),
                tuple((k, kd) for k, kd in queued))

    # ------------------------------------------------------------------ recording outcomes

    def record_outcomes(
        self,
        *,
        outcomes: Sequence[Outcome],
        now: float,
        watermarks: Mapping[str, float] | None = None,
        wake: Collection[tuple[str, str]] = (),
        opening: Collection[str] = (),
        closing: Collection[str] = (),
    ) -> BatchResult:
        """`store.record_outcomes(outcomes=, now=, watermarks=)` writes a batch atomically.

        Delivered outcomes (done, already_done) become delivery records and leave the outbox;
        TRANSIENT ones go to the outbox (attempts + 1, next retry after the backoff, last error);
        PERMANENT ones become failed delivery records and leave the outbox; SKIPPED ones are not
        stored (an outbox entry they concern stays). ``watermarks`` ({connector: value}) move in
        the same transaction, forward only (see :meth:`set_watermark`). ``wake`` ({(connector,
        key)}) makes every queued action of those keys due now: an action that waited for
        another of its key (a stop for its start) goes as soon as that one is settled, not after
        its own backoff. ``opening`` and ``closing`` name the connector's kinds that open and
        close a run (``Kind.opens``/``closes``): its open runs (:meth:`open_runs`) are kept up
        to date with them; without them they are rebuilt when next read. Nothing is written
        when nothing changed; on any error nothing of the batch is.
        """
        _check_time(now, "now")
        marks = dict(watermarks or {})
        for name, value in marks.items():
            _check_time(value, f"watermark of {name!r}")
        rows = [_OutcomeRow.of(o) for o in outcomes if o.status is not Status.SKIPPED]
        skipped = len(outcomes) - len(rows)
        woken = sorted(set(wake))
        if not rows and not marks and not woken:
            return BatchResult(skipped=skipped)
        self._check_writable("record_outcomes")

        def write(conn: sqlite3.Connection) -> BatchResult:
            moved = tuple(
                name for name, value in sorted(marks.items())
                if _move_watermark(conn, name, value, now)
            )
            attempts = _outbox_attempts(
                conn, [r for r in rows if r.status is Status.TRANSIENT]
            )
            counts = {"delivered": 0, "failed": 0, "queued": 0}
            # before this batch's own rows, which keep the backoff they get here
            conn.executemany(
                "UPDATE outbox SET next_retry = ? WHERE connector = ? AND key = ?"
                " AND next_retry > ?", [(now, name, key, now) for name, key in woken])
            for row in rows:
                ident = (row.connector, row.key, row.kind)
                if row.status is Status.TRANSIENT:
                    attempts[ident] = n = attempts.get(ident, 0) + 1
                    delay = self._backoff.delay(n, self._rand(), row.retry_after)
                    _queue(conn, row, attempts=n, now=now, next_retry=now + delay)
                    counts["queued"] += 1
                else:
                    _deliver(conn, row, now=now)
                    attempts.pop(ident, None)
                    counts["failed" if row.status is Status.PERMANENT else "delivered"] += 1
            _track_open_runs(conn, [r for r in rows if r.status is not Status.TRANSIENT],
                             opening, closing)
            return BatchResult(skipped=skipped, watermarks_moved=moved, **counts)

        return self._write("recording outcomes", write)

    # ------------------------------------------------------------------------- outbox

    def due(
        self,
        *,
        connector: str,
        now: float,
        limit: int | None = None,
        kinds: Collection[str] | None = None,
    ) -> tuple[OutboxEntry, ...]:
        """`store.due(connector=, now=, limit=)` is the entries due by ``now``, oldest first.

        Oldest means first queued; ``kinds`` restricts them to those action kinds.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        kind_list = sorted(set(kinds)) if kinds is not None else None
        if limit == 0 or kind_list == []:
            return ()
        sql = (
            "SELECT key, kind, payload, reason, attempts, queued_at, next_retry, last_error"
            " FROM outbox WHERE connector = ? AND next_retry <= ?"
        )
        params: list[Any] = [connector, now]
        if kind_list is not None:
            sql += f" AND kind IN ({', '.join('?' * len(kind_list))})"
            params += kind_list
        sql += " ORDER BY queued_at, key, kind"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = self._read("reading the outbox", lambda c: c.execute(sql, params).fetchall())
        return tuple(
            OutboxEntry(
                action=Action(connector=connector, kind=kind, key=key,
                              payload=json.loads(payload), reason=reason),
                attempts=attempts, queued_at=queued_at, next_retry=next_retry,
                last_error=last_error,
            )
            for key, kind, payload, reason, attempts, queued_at, next_retry, last_error in rows
        )

    def outbox_stats(self, *, connector: str) -> OutboxStats:
        """`store.outbox_stats(connector=)` is the outbox depth and its oldest entry's time."""
        depth, oldest, next_retry = self._read(
            "reading the outbox",
            lambda c: c.execute(
                "SELECT count(*), min(queued_at), min(next_retry) FROM outbox"
                " WHERE connector = ?",
                (connector,),
            ).fetchone(),
        )
        return OutboxStats(connector, depth, oldest, next_retry)

    def next_retry_after(self, *, connector: str, after: float) -> float | None:
        """When the first outbox entry of ``connector`` due later than ``after`` is due (None:
        none): what a resident loop waits for, leaving aside entries a cycle chose not to send."""
        (first,) = self._read(
            "reading the outbox",
            lambda c: c.execute(
                "SELECT min(next_retry) FROM outbox WHERE connector = ? AND next_retry > ?",
                (connector, after),
            ).fetchone(),
        )
        return None if first is None else float(first)

    # ---------------------------------------------------------------------- watermark

    def get_watermark(self, *, connector: str) -> float | None:
        """`store.get_watermark(connector=)` is the stored watermark, None before the first."""
        row = self._read(
            "reading the watermark",
            lambda c: c.execute(
                "SELECT value FROM watermarks WHERE connector = ?", (connector,)
            ).fetchone(),
        )
        return None if row is None else float(row[0])

    def set_watermark(self, *, connector: str, value: float, now: float) -> bool:
        """`store.set_watermark(connector=, value=, now=)` moves the watermark forward.

        Returns True when it moved; a value not past the stored one is ignored (returns False,
        writes nothing): the watermark never moves backwards.
        """
        _check_time(value, "watermark")
        _check_time(now, "now")
        self._check_writable("set_watermark")
        return self._write(
            "setting the watermark", lambda c: _move_watermark(c, connector, value, now)
        )

    # ---------------------------------------------------------------------------- lag

    def record_lag(
        self, *, connector: str, now: float, ended_unstopped: int, oldest_end: float | None,
        unknown: int, refused: int,
    ) -> None:
        """`store.record_lag(connector=, now=, ...)` keeps the connector's lag after a cycle
        (one row per connector, replaced each cycle), for ``status``, ``check`` and metrics."""
        _check_time(now, "now")
        if oldest_end is not None:
            _check_time(oldest_end, "oldest_end")
        self._check_writable("record_lag")
        self._write("recording the lag", lambda c: c.execute(
            "INSERT INTO lag (connector, at, ended_unstopped, oldest_end, unknown, refused)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (connector) DO UPDATE SET at = excluded.at,"
            " ended_unstopped = excluded.ended_unstopped, oldest_end = excluded.oldest_end,"
            " unknown = excluded.unknown, refused = excluded.refused",
            (connector, now, ended_unstopped, oldest_end, unknown, refused)))

    def lag(self, *, connector: str) -> LagRecord | None:
        """`store.lag(connector=)` is the lag its last cycle recorded, None before the first."""
        row = self._read("reading the lag", lambda c: c.execute(
            "SELECT at, ended_unstopped, oldest_end, unknown, refused FROM lag"
            " WHERE connector = ?", (connector,)).fetchone())
        return None if row is None else LagRecord(connector, *row)

    # --------------------------------------------------------------------------- runs

    def record_run(
        self, *, started: float, ended: float, exit_code: int, counts: Iterable[RunCount] = (),
        skipped: int = 0,
    ) -> Run:
        """`store.record_run(started=, ended=, exit_code=, counts=)` records one run."""
        _check_time(started, "started")
        _check_time(ended, "ended")
        merged: dict[tuple[str, Status], int] = {}
        for item in counts:
            if item.count < 0:
                raise ValueError(f"negative count for {item.connector}/{item.status.value}")
            slot = (item.connector, Status(item.status))
            merged[slot] = merged.get(slot, 0) + item.count
        self._check_writable("record_run")

        def write(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO runs (started, ended, exit_code, skipped) VALUES (?, ?, ?, ?)",
                (started, ended, exit_code, skipped),
            )
            run_id = int(cursor.lastrowid or 0)
            conn.executemany(
                "INSERT INTO run_counts (run_id, connector, status, count) VALUES (?, ?, ?, ?)",
                [(run_id, c, s.value, n) for (c, s), n in sorted(merged.items())],
            )
            return run_id

        run_id = self._write("recording the run", write)
        return Run(
            run_id, started, ended, exit_code,
            tuple(RunCount(c, s, n) for (c, s), n in sorted(merged.items())), skipped,
        )

    def last_run(self) -> Run | None:
        """`store.last_run()` is the most recently recorded run, None before the first."""

        def read(conn: sqlite3.Connection) -> Run | None:
            row = conn.execute(
                "SELECT id, started, ended, exit_code, skipped FROM runs ORDER BY id DESC LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            counts = conn.execute(
                "SELECT connector, status, count FROM run_counts WHERE run_id = ?"
                " ORDER BY connector, status",
                (row[0],),
            ).fetchall()
            run_id, started, ended, exit_code, skipped = row
            return Run(
                run_id, started, ended, exit_code,
                tuple(RunCount(c, Status(s), n) for c, s, n in counts), skipped,
            )

        return self._read("reading the last run", read, snapshot=True)

    def connectors(self) -> tuple[str, ...]:
        """`store.connectors()` is every connector name with state in the store, sorted."""
        return tuple(
            r[0]
            for r in self._read(
                "reading connectors",
                lambda c: c.execute(
                    "SELECT connector FROM watermarks UNION SELECT connector FROM outbox"
                    " UNION SELECT DISTINCT connector FROM deliveries ORDER BY 1"
                ).fetchall(),
            )
        )

    # -------------------------------------------------------------------------- purge

    def purge(self, *, older_than: float, keep: Collection[str] = ()) -> PurgeResult:
        """`store.purge(older_than=, keep=)` forgets jobs long finished and old runs.

        A key's delivery records go, all kinds together, when the newest of them is older than
        ``older_than``, unless the key is in ``keep``, in the outbox, or an open run (opened
        and not closed: a job still running, whose only record may be an old start; see
        :meth:`open_runs`). A connector whose open runs are not built (never read since the
        kinds were last given) is left alone: what is open cannot be told there. Choose
        ``older_than`` well before the start of the sacct window and beyond every service's
        idempotence window. Runs that ended before it go too, except the last. The candidates
        are found through the index on the records' age, so a purge costs what it removes, not
        what is kept.
        """
        _check_time(older_than, "older_than")
        self._check_writable("purge")
        kept = frozenset(keep)

        def write(conn: sqlite3.Connection) -> PurgeResult:
            old = conn.execute(
                "SELECT DISTINCT connector, key FROM deliveries INDEXED BY deliveries_by_age"
                " WHERE at < ?"
                " AND connector IN (SELECT connector FROM open_runs_kinds)", (older_than,)
            ).fetchall()
            gone = [
                (c, k) for c, k in old if k not in kept
                and conn.execute(
                    "SELECT max(at) FROM deliveries WHERE connector = ? AND key = ?", (c, k)
                ).fetchone()[0] < older_than
                and not conn.execute(
                    "SELECT 1 FROM outbox WHERE connector = ? AND key = ?", (c, k)).fetchone()
                and not conn.execute(
                    "SELECT 1 FROM open_runs WHERE connector = ? AND key = ?", (c, k)).fetchone()
            ]
            before = conn.total_changes
            conn.executemany("DELETE FROM deliveries WHERE connector = ? AND key = ?", gone)
            deliveries = conn.total_changes - before
            runs = conn.execute(
                "DELETE FROM runs WHERE ended < ? AND id <> (SELECT max(id) FROM runs)",
                (older_than,),
            ).rowcount
            return PurgeResult(deliveries=deliveries, runs=max(runs, 0))

        return self._write("purging", write)

    def purge_due(self, *, now: float, every: float) -> bool:
        """`store.purge_due(now=, every=)` is true, and notes ``now``, when the last purge was
        ``every`` seconds ago or more (or never): a cycle purges at most that often."""
        _check_time(now, "now")
        self._check_writable("purge")

        def write(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT value FROM meta WHERE name = 'last_purge'").fetchone()
            if row is not None and now - float(row[0]) < every:
                return False
            conn.execute("INSERT INTO meta (name, value) VALUES ('last_purge', ?)"
                         " ON CONFLICT (name) DO UPDATE SET value = excluded.value", (now,))
            return True

        return self._write("noting the purge", write)

    def note(self, name: str, value: float) -> None:
        """`store.note("hook_event", t)` keeps one number under ``name`` (``noted`` reads it)."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO meta (name, value) VALUES (?, ?)"
                         " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                         (name, float(value)))

        self._write(f"noting {name}", write)

    def noted(self, name: str) -> float | None:
        """The number ``note`` kept under ``name``, None when none was."""
        row = self._read(f"reading {name}", lambda conn: conn.execute(
            "SELECT value FROM meta WHERE name = ?", (name,)).fetchone())
        return None if row is None else float(row[0])

    # -------------------------------------------------------------- transactions, retries

    def _check_writable(self, what: str) -> None:
        if self._read_only:
            raise StoreError(
                f"{what}: the state database {self.path} is open read-only (dry run); "
                f"nothing is written"
            )

    def _read(
        self, what: str, body: Callable[[sqlite3.Connection], T], *, snapshot: bool = False
    ) -> T:
        """Runs ``body`` (in one read transaction when ``snapshot``), retrying when locked."""
        if snapshot:
            return self._retrying(what, lambda: self._transaction(body, begin="BEGIN"))
        return self._retrying(what, lambda: body(self._conn))

    def _write(self, what: str, body: Callable[[sqlite3.Connection], T]) -> T:
        self._check_writable(what)
        return self._retrying(what, lambda: self._transaction(body))

    def _transaction(
        self, body: Callable[[sqlite3.Connection], T], *, begin: str = "BEGIN IMMEDIATE"
    ) -> T:
        """Runs ``body`` in one transaction: all of it is committed, or none of it."""
        conn = self._conn
        conn.execute(begin)
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """The only place ``database is locked`` is retried: a few times, backing off."""
        with self._mutex:
            tries = self._lock_retries + 1
            for number in range(1, tries + 1):
                try:
                    return attempt()
                except sqlite3.OperationalError as exc:
                    if not _is_locked(exc):
                        raise StoreError(f"{what} failed on {self.path}: {exc}") from exc
                    if number == tries:
                        raise StoreError(
                            f"{what}: the state database {self.path} is locked by another"
                            f" process; gave up after {tries} attempt(s): {exc}"
                        ) from exc
                    self._sleep(self._lock_backoff * 2 ** (number - 1))
                except sqlite3.Error as exc:
                    raise StoreError(f"{what} failed on {self.path}: {exc}") from exc
            raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _OutcomeRow:
    """An outcome as it is written: JSON already made, so a bad payload fails before SQL."""

    connector: str
    key: str
    kind: str
    status: Status
    payload: str
    reason: str
    text: str
    retry_after: float | None

    @classmethod
    def of(cls, outcome: Outcome) -> _OutcomeRow:
        action = outcome.action
        try:
            payload = _dumps(dict(action.payload))
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"cannot store the payload of {action.connector} {action.kind} {action.key}:"
                f" {exc}"
            ) from exc
        return cls(
            action.connector, action.key, action.kind, Status(outcome.status), payload,
            action.reason, _clip(outcome.detail), outcome.retry_after,
        )


def _deliver(conn: sqlite3.Connection, row: _OutcomeRow, *, now: float) -> None:
    # A delivered record is final. A permanent failure is replaced by a delivery, or by a
    # newer failure with another detail; identical records are not rewritten.
    conn.execute(
        "INSERT INTO deliveries (connector, key, kind, status, at, detail, job_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (connector, key, kind) DO UPDATE SET"
        " status = excluded.status, at = excluded.at, detail = excluded.detail"
        " WHERE deliveries.status = 'permanent'"
        " AND (excluded.status <> 'permanent' OR excluded.detail <> deliveries.detail)",
        (row.connector, row.key, row.kind, row.status.value, now,
         _dumps({"detail": row.text} if row.text else {}), _job_id_of(row.key)),
    )
    conn.execute(
        "DELETE FROM outbox WHERE connector = ? AND key = ? AND kind = ?",
        (row.connector, row.key, row.kind),
    )


def _queue(
    conn: sqlite3.Connection, row: _OutcomeRow, *, attempts: int, now: float, next_retry: float
) -> None:
    conn.execute(
        "INSERT INTO outbox (connector, key, kind, payload, reason, attempts, queued_at,"
        " next_retry, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (connector, key, kind) DO UPDATE SET"
        " payload = excluded.payload, reason = excluded.reason, attempts = excluded.attempts,"
        " next_retry = excluded.next_retry, last_error = excluded.last_error",
        (row.connector, row.key, row.kind, row.payload, row.reason, attempts, now,
         next_retry, row.text),
    )


def _outbox_attempts(
    conn: sqlite3.Connection, rows: Sequence[_OutcomeRow]
) -> dict[tuple[str, str, str], int]:
    """The attempts already counted for the outbox entries of ``rows``."""
    found: dict[tuple[str, str, str], int] = {}
    by_connector: dict[str, list[str]] = {}
    for row in rows:
        by_connector.setdefault(row.connector, []).append(row.key)
    for connector, keys in by_connector.items():
        for chunk in _chunks(keys):
            for key, kind, attempts in conn.execute(
                "SELECT key, kind, attempts FROM outbox WHERE connector = ?"
                f" AND key IN ({', '.join('?' * len(chunk))})",
                (connector, *chunk),
            ):
                found[(connector, key, kind)] = attempts
    return found


def _move_watermark(conn: sqlite3.Connection, connector: str, value: float, now: float) -> bool:
    cursor = conn.execute(
        "INSERT INTO watermarks (connector, value, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (connector) DO UPDATE SET"
        " value = excluded.value, updated_at = excluded.updated_at"
        " WHERE excluded.value > watermarks.value",
        (connector, value, now),
    )
    return cursor.rowcount > 0


def _version(conn: sqlite3.Connection) -> int:
    """The schema version of ``conn``'s database: 0 when empty; refuses a foreign database."""
    tables = {
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if "schema_version" not in tables:
        if tables:
            raise StoreError(
                f"not a slurm-sync state database (tables {', '.join(sorted(tables))},"
                f" no schema_version)"
            )
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def _make_parents(directory: Path) -> None:
    """Creates the missing directories down to ``directory``, each with mode 0700."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise StoreError(f"cannot create the state directory {path}: {exc}") from exc
        os.chmod(path, 0o700)


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _check_time(value: float, name: str) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")


def _start_of(key: str) -> int | None:
    """The start time in a delivery key ``cluster/job_id/start``, None for another form."""
    parts = RunKey.parse(key)
    return parts.start if parts is not None else None


def _job_id_of(key: str) -> int | None:
    """The Slurm job id in a ``cluster/job_id/start_time`` key, None in a key of another form."""
    parts = RunKey.parse(key)
    return parts.job_id if parts is not None else None


def _fill_job_ids(conn: sqlite3.Connection) -> None:
    """Migration 4: the job id of every delivery record whose key is a run's."""
    rows = conn.execute("SELECT connector, key, kind FROM deliveries").fetchall()
    conn.executemany(
        "UPDATE deliveries SET job_id = ? WHERE connector = ? AND key = ? AND kind = ?",
        [(job_id, c, k, kd) for c, k, kd in rows if (job_id := _job_id_of(k)) is not None])


def _kinds_signature(opening: Collection[str], closing: Collection[str]) -> str:
    return json.dumps([sorted(set(opening)), sorted(set(closing))])


def _scan_open(conn: sqlite3.Connection, connector: str, opening: Collection[str],
               closing: Collection[str]) -> frozenset[str]:
    """Every delivered key of an ``opening`` kind with no delivered ``closing`` kind (a scan
    of the connector's deliveries: done once, then kept by ``_track_open_runs``)."""
    def keys(kinds: Collection[str]) -> set[str]:
        found: set[str] = set()
        for kind in sorted(set(kinds)):
            found.update(r[0] for r in conn.execute(
                "SELECT key FROM deliveries WHERE connector = ? AND kind = ?"
                " AND status <> 'permanent'", (connector, kind)))
        return found

    return frozenset(keys(opening) - keys(closing))


def _track_open_runs(conn: sqlite3.Connection, rows: Sequence[_OutcomeRow],
                     opening: Collection[str], closing: Collection[str]) -> None:
    """Keep ``open_runs`` in step with the recorded rows, for each connector whose open runs
    were built with these kinds; any other connector's are marked for a rebuild."""
    signature = _kinds_signature(opening, closing)
    for connector in sorted({r.connector for r in rows}):
        built = conn.execute("SELECT kinds FROM open_runs_kinds WHERE connector = ?",
                             (connector,)).fetchone()
        if built is None:
            continue
        if built[0] != signature:
            conn.execute("DELETE FROM open_runs_kinds WHERE connector = ?", (connector,))
            continue
        for row in rows:
            if row.connector != connector:
                continue
            # the record as it stands (a delivered record is final: a late refusal of the
            # same key and kind did not replace it)
            status = conn.execute(
                "SELECT status FROM deliveries WHERE connector = ? AND key = ? AND kind = ?",
                (connector, row.key, row.kind)).fetchone()
            if status is None or status[0] == "permanent":
                continue
            if row.kind in closing:
                conn.execute("DELETE FROM open_runs WHERE connector = ? AND key = ?",
                             (connector, row.key))
            elif row.kind in opening and not conn.execute(
                    "SELECT 1 FROM deliveries WHERE connector = ? AND key = ?"
                    f" AND status <> 'permanent' AND kind IN ({', '.join('?' * len(closing))})",
                    (connector, row.key, *sorted(closing))).fetchone():
                conn.execute("INSERT OR IGNORE INTO open_runs (connector, key, job_id)"
                             " VALUES (?, ?, ?)", (connector, row.key, _job_id_of(row.key)))


def _chunks(keys: Iterable[str]) -> Iterator[list[str]]:
    unique = sorted(set(keys))
    for start in range(0, len(unique), _KEY_CHUNK):
        yield unique[start : start + _KEY_CHUNK]


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _clip(text: str) -> str:
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 3] + "..."
