"""The state database: round trips, atomic batches, the watermark, the outbox and its backoff,
crashes, locks, read-only (dry-run) stores, migrations and purging."""

from __future__ import annotations

import contextlib
import doctest
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import slurm_sync.store
from slurm_sync.actions import Action, Outcome, Status
from slurm_sync.errors import SyncError
from slurm_sync.store import (
    SCHEMA_VERSION,
    Backoff,
    Migration,
    RunCount,
    Store,
    StoreError,
)

TS0 = 1_790_000_000.0
TS1 = TS0 + 60
TS2 = TS0 + 120
TS3 = TS0 + 180
TS4 = TS0 + 240
DAY = 86_400.0

KEY1 = "lab2411/41/1789990000"
KEY2 = "lab2411/42/1789990100"
KEY3 = "lab2411/43/1789990200"

NO_JITTER = Backoff(base=30.0, factor=2.0, cap=600.0, jitter=0.2)


def _action(key: str = KEY1, kind: str = "start", connector: str = "events",
            **payload: Any) -> Action:
    return Action(connector=connector, kind=kind, key=key, payload=payload or {"job": key},
                  reason="running, not delivered")


def _open(path: Path, **options: Any) -> Store:
    options.setdefault("backoff", NO_JITTER)
    options.setdefault("rand", lambda: 0.0)
    return Store.open(path, **options)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with _open(db) as opened:
        yield opened


def _files(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def _connect(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(db), isolation_level=None)


@contextlib.contextmanager
def _raw(db: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to look at or tamper with the file, closed afterwards."""
    conn = _connect(db)
    try:
        yield conn
    finally:
        conn.close()


# ------------------------------------------------------------------------------ opening


def test_open_creates_private_directories_and_file_whatever_the_umask(tmp_path: Path) -> None:
    """Parent directories it creates are 0700, the database 0600; existing ones are left alone."""
    db = tmp_path / "a" / "b" / "state.db"
    before = stat.S_IMODE(tmp_path.stat().st_mode)
    old_umask = os.umask(0)
    try:
        Store.open(db).close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) == before


def test_open_sets_wal_synchronous_normal_foreign_keys_and_busy_timeout(db: Path) -> None:
    """The connection's pragmas (read through the private connection, nothing else shows them)."""
    with Store.open(db, busy_timeout=1.5) as store:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 1500


def test_store_error_is_a_sync_error() -> None:
    assert issubclass(StoreError, SyncError)


def test_a_file_that_is_not_a_database_is_refused_by_name(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"this is not sqlite, but long enough to have a header......" * 4)
    with pytest.raises(StoreError, match=str(db)):
        Store.open(db)


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with _raw(db) as conn:
        conn.execute("CREATE TABLE jobs (id INTEGER)")
    with pytest.raises(StoreError, match="not a slurm-sync state database"):
        Store.open(db)


def test_an_empty_existing_file_becomes_a_store(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.touch()
    with Store.open(db) as store:
        assert store.schema_version == SCHEMA_VERSION


# ---------------------------------------------------------------------------- round trips


def test_delivery_round_trip(db: Path) -> None:
    """Status, time and detail come back as written, after a reopen too."""
    with _open(db) as store:
        store.record_outcomes(outcomes=[
            Outcome.done(_action(KEY1), "201 created"),
            Outcome.already_done(_action(KEY2), "422 exists"),
            Outcome.permanent(_action(KEY3), "400 bad nodelist"),
        ], now=TS1)
    with _open(db) as store:
        records = store.deliveries(connector="events")
    assert [(d.key, d.kind, d.status, d.at, dict(d.detail)) for d in records] == [
        (KEY1, "start", Status.DONE, TS1, {"detail": "201 created"}),
        (KEY2, "start", Status.ALREADY_DONE, TS1, {"detail": "422 exists"}),
        (KEY3, "start", Status.PERMANENT, TS1, {"detail": "400 bad nodelist"}),
    ]


def test_delivered_is_per_connector_kind_and_key(store: Store) -> None:
    """A job's 'start' and 'stop' are separate deliveries; connectors do not see each other's."""
    store.record_outcomes(outcomes=[
        Outcome.done(_action(KEY1, "start")),
        Outcome.done(_action(KEY1, "stop")),
        Outcome.done(_action(KEY2, "start")),
        Outcome.done(_action(KEY3, "start", connector="cockpit")),
        Outcome.permanent(_action(KEY3, "start"), "400"),
    ], now=TS1)
    assert store.delivered(connector="events", kind="start") == {KEY1, KEY2}
    assert store.delivered(connector="events", kind="stop") == {KEY1}
    assert store.delivered(connector="events", kind="start", keys=[KEY2, KEY3]) == {KEY2}
    assert store.delivered(connector="cockpit", kind="start") == {KEY3}
    assert store.delivered(connector="nobody", kind="start", keys=[KEY1]) == frozenset()
    assert store.failed(connector="events", kind="start") == {KEY3}
    assert [d.kind for d in store.deliveries(connector="events", keys=[KEY1])] == [
        "start", "stop"]
    assert store.connectors() == ("cockpit", "events")


def test_delivered_handles_more_keys_than_one_query_holds(store: Store) -> None:
    keys = [f"lab2411/{n}/{int(TS0)}" for n in range(1300)]
    store.record_outcomes(outcomes=[Outcome.done(_action(k)) for k in keys[::2]], now=TS1)
    assert store.delivered(connector="events", kind="start", keys=keys) == set(keys[::2])
    assert len(store.deliveries(connector="events", keys=keys)) == 650


def test_outbox_entry_rebuilds_the_planned_action(db: Path) -> None:
    """An entry survives a restart and gives back the action as planned, payload included."""
    action = Action(connector="events", kind="stop", key=KEY1,
                    payload={"job_id": 41, "nodes": ["n1", "n2"], "exit": {"code": 0}},
                    reason="finished in window")
    with _open(db) as store:
        store.record_outcomes(outcomes=[Outcome.transient(action, "timeout")], now=TS1)
    with _open(db) as store:
        (entry,) = store.due(connector="events", now=TS1 + DAY)
        assert store.queued(connector="events", kind="stop") == {KEY1}
    assert entry.action == action
    assert dict(entry.action.payload) == dict(action.payload)
    assert (entry.attempts, entry.queued_at, entry.next_retry, entry.last_error) == (
        1, TS1, TS1 + 30.0, "timeout")


def test_run_round_trip(store: Store) -> None:
    assert store.last_run() is None
    outcomes = [
        Outcome.done(_action(KEY1)), Outcome.done(_action(KEY2)),
        Outcome.transient(_action(KEY3), "503"),
        Outcome.skipped(_action(KEY1, connector="cockpit"), "limit"),
    ]
    store.record_run(started=TS0, ended=TS1, exit_code=0, counts=[])
    written = store.record_run(started=TS2, ended=TS3, exit_code=1,
                               counts=RunCount.from_outcomes(outcomes))
    last = store.last_run()
    assert last == written
    assert last is not None
    assert (last.started, last.ended, last.exit_code) == (TS2, TS3, 1)
    assert last.counts == (
        RunCount("cockpit", Status.SKIPPED, 1),
        RunCount("events", Status.DONE, 2),
        RunCount("events", Status.TRANSIENT, 1),
    )
    assert last.count(connector="events") == 3
    assert last.count(status=Status.DONE) == 2
    assert last.count() == 4


def test_run_counts_of_the_same_connector_and_status_add_up(store: Store) -> None:
    run = store.record_run(started=TS0, ended=TS1, exit_code=0, counts=[
        RunCount("events", Status.DONE, 2), RunCount("events", Status.DONE, 3)])
    assert run.counts == (RunCount("events", Status.DONE, 5),)
    assert store.last_run() == run


def test_module_docstring_example_runs() -> None:
    result = doctest.testmod(slurm_sync.store)
    assert result.attempted > 0
    assert result.failed == 0


# --------------------------------------------------------------------------- atomic batches


def _fail_on_key(db: Path, key: str) -> None:
    """A trigger that aborts any insert of ``key`` into deliveries: a failure mid-batch."""
    with _raw(db) as conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON deliveries"
            f" WHEN new.key = '{key}' BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )


def test_a_batch_failing_midway_writes_nothing(db: Path) -> None:
    """Rows before the failure, the outbox changes and the watermark are all rolled back."""
    with _open(db) as store:
        store.record_outcomes(outcomes=[Outcome.transient(_action(KEY1), "503")], now=TS0,
                              watermarks={"events": TS0})
    _fail_on_key(db, KEY3)
    with _open(db) as store:
        with pytest.raises(StoreError, match="disk on fire"):
            store.record_outcomes(outcomes=[
                Outcome.done(_action(KEY1)),           # would leave the outbox
                Outcome.transient(_action(KEY2), "timeout"),
                Outcome.done(_action(KEY3)),           # fails here
            ], now=TS1, watermarks={"events": TS1})
        assert store.delivered(connector="events", kind="start") == frozenset()
        assert store.queued(connector="events", kind="start") == {KEY1}
        assert store.due(connector="events", now=TS4 + DAY)[0].attempts == 1
        assert store.get_watermark(connector="events") == TS0
        # the store is still usable after the failure
        store.record_outcomes(outcomes=[Outcome.done(_action(KEY1))], now=TS2)
        assert store.delivered(connector="events", kind="start") == {KEY1}


def test_an_unstorable_payload_fails_the_batch_before_any_write(store: Store) -> None:
    bad = Action(connector="events", kind="start", key=KEY2, payload={"when": object()})
    with pytest.raises(StoreError, match=f"events start {KEY2}"):
        store.record_outcomes(outcomes=[Outcome.done(_action(KEY1)), Outcome.done(bad)],
                              now=TS1, watermarks={"events": TS1})
    assert store.delivered(connector="events", kind="start") == frozenset()
    assert store.get_watermark(connector="events") is None


def test_writes_only_what_changed(store: Store) -> None:
    """A delivery recorded again changes no row and keeps its first time."""
    batch = [Outcome.done(_action(KEY1)), Outcome.already_done(_action(KEY2))]
    store.record_outcomes(outcomes=batch, now=TS1, watermarks={"events": TS1})
    changes = store._conn.total_changes
    result = store.record_outcomes(outcomes=batch, now=TS2, watermarks={"events": TS1})
    assert store._conn.total_changes == changes
    assert result.watermarks_moved == ()
    assert {d.at for d in store.deliveries(connector="events")} == {TS1}


def test_nothing_to_record_is_no_transaction(store: Store) -> None:
    changes = store._conn.total_changes
    result = store.record_outcomes(
        outcomes=[Outcome.skipped(_action(KEY1), "limit")], now=TS1)
    assert (result.skipped, result.delivered, result.queued) == (1, 0, 0)
    assert store._conn.total_changes == changes


def test_batch_result_counts(store: Store) -> None:
    result = store.record_outcomes(outcomes=[
        Outcome.done(_action(KEY1)), Outcome.already_done(_action(KEY2)),
        Outcome.transient(_action(KEY3), "503"), Outcome.permanent(_action(KEY3, "stop"), "400"),
        Outcome.skipped(_action(KEY1, "stop"), "not finished"),
    ], now=TS1, watermarks={"events": TS1})
    assert (result.delivered, result.queued, result.failed, result.skipped) == (2, 1, 1, 1)
    assert result.watermarks_moved == ("events",)


def test_skipped_outcomes_are_not_stored_and_leave_the_outbox_alone(store: Store) -> None:
    store.record_outcomes(outcomes=[Outcome.transient(_action(KEY1), "503")], now=TS0)
    store.record_outcomes(outcomes=[Outcome.skipped(_action(KEY1), "limit"),
                                    Outcome.skipped(_action(KEY2), "limit")], now=TS1)
    assert store.deliveries(connector="events") == ()
    assert store.queued(connector="events", kind="start") == {KEY1}


def test_a_delivered_record_is_final(store: Store) -> None:
    """A later permanent failure does not undo a delivery; a delivery replaces a failure."""
    store.record_outcomes(outcomes=[Outcome.done(_action(KEY1), "201"),
                                    Outcome.permanent(_action(KEY2), "400")], now=TS1)
    store.record_outcomes(outcomes=[Outcome.permanent(_action(KEY1), "409"),
                                    Outcome.done(_action(KEY2), "201")], now=TS2)
    assert store.delivered(connector="events", kind="start") == {KEY1, KEY2}
    assert store.failed(connector="events", kind="start") == frozenset()
    assert [(d.key, d.at, dict(d.detail)) for d in store.deliveries(connector="events")] == [
        (KEY1, TS1, {"detail": "201"}), (KEY2, TS2, {"detail": "201"})]


def test_concurrent_threads_share_one_store(store: Store) -> None:
    def worker(n: int) -> None:
        for i in range(20):
            key = f"lab2411/{n * 100 + i}/{int(TS0)}"
            store.record_outcomes(outcomes=[Outcome.done(_action(key))], now=TS1)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.delivered(connector="events", kind="start")) == 80


# ------------------------------------------------------------------------------ watermark


def test_watermark_moves_forward_only(store: Store) -> None:
    """A value not past the stored one is ignored and reported as not moved (False)."""
    assert store.get_watermark(connector="events") is None
    assert store.set_watermark(connector="events", value=TS2, now=TS2) is True
    assert store.set_watermark(connector="events", value=TS1, now=TS3) is False
    assert store.set_watermark(connector="events", value=TS2, now=TS3) is False
    assert store.get_watermark(connector="events") == TS2
    assert store.set_watermark(connector="events", value=TS3, now=TS3) is True
    assert store.get_watermark(connector="events") == TS3


def test_watermarks_are_per_connector(store: Store) -> None:
    store.set_watermark(connector="events", value=TS3, now=TS3)
    assert store.set_watermark(connector="cockpit", value=TS1, now=TS3) is True
    assert store.get_watermark(connector="cockpit") == TS1
    assert store.get_watermark(connector="events") == TS3


def test_watermark_commits_with_its_batch(db: Path) -> None:
    with _open(db) as store:
        result = store.record_outcomes(
            outcomes=[Outcome.done(_action(KEY1)), Outcome.transient(_action(KEY2), "503")],
            now=TS2, watermarks={"events": TS2, "cockpit": TS1})
        assert result.watermarks_moved == ("cockpit", "events")
    with _open(db) as store:  # both halves are on disk
        assert store.get_watermark(connector="events") == TS2
        assert store.delivered(connector="events", kind="start") == {KEY1}
        assert store.queued(connector="events", kind="start") == {KEY2}


def test_a_backwards_watermark_in_a_batch_is_ignored_the_batch_is_recorded(store: Store) -> None:
    store.set_watermark(connector="events", value=TS3, now=TS3)
    result = store.record_outcomes(outcomes=[Outcome.done(_action(KEY1))], now=TS4,
                                   watermarks={"events": TS1})
    assert result.watermarks_moved == ()
    assert result.delivered == 1
    assert store.get_watermark(connector="events") == TS3


def test_a_watermark_alone_is_a_batch(store: Store) -> None:
    """An empty window still moves the watermark."""
    result = store.record_outcomes(outcomes=[], now=TS1, watermarks={"events": TS1})
    assert result.watermarks_moved == ("events",)
    assert store.get_watermark(connector="events") == TS1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_watermark_must_be_a_finite_time(store: Store, value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        store.set_watermark(connector="events", value=value, now=TS1)
    with pytest.raises(ValueError, match="finite"):
        store.record_outcomes(outcomes=[], now=TS1, watermarks={"events": value})


# ------------------------------------------------------------------------ outbox, backoff


def test_backoff_grows_and_caps() -> None:
    backoff = Backoff(base=30.0, factor=2.0, cap=600.0, jitter=0.0)
    assert [backoff.delay(n, 0.5) for n in range(1, 8)] == [30, 60, 120, 240, 480, 600, 600]
    assert backoff.delay(10_000, 0.5) == 600.0  # no overflow


def test_backoff_jitter_only_shortens_and_stays_within_its_share() -> None:
    backoff = Backoff(base=100.0, factor=2.0, cap=1000.0, jitter=0.2)
    assert backoff.delay(1, 0.0) == 100.0
    assert backoff.delay(1, 0.5) == pytest.approx(90.0)
    assert backoff.delay(1, 0.999999) == pytest.approx(80.0, abs=1e-3)
    assert backoff.delay(5, 0.999999) >= 800.0  # capped, still jittered
    # with jitter below 1 - 1/factor, even the worst draws keep growing
    assert backoff.delay(2, 0.999999) > backoff.delay(1, 0.0)


def test_backoff_honours_a_larger_retry_after_up_to_a_limit() -> None:
    backoff = Backoff(base=30.0, cap=600.0, jitter=0.0, max_retry_after=3600.0)
    assert backoff.delay(1, 0.0, retry_after=120.0) == 120.0
    assert backoff.delay(1, 0.0, retry_after=5.0) == 30.0
    assert backoff.delay(1, 0.0, retry_after=1e9) == 3600.0
    assert backoff.delay(1, 0.0, retry_after=float("nan")) == 30.0
    assert backoff.delay(1, 0.0, retry_after=-10.0) == 30.0


@pytest.mark.parametrize("options", [
    {"base": 0.0}, {"base": 10.0, "cap": 5.0}, {"factor": 0.5}, {"jitter": 1.0},
    {"jitter": -0.1}, {"max_retry_after": -1.0}, {"cap": float("inf")},
])
def test_backoff_refuses_nonsense(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**options)


def test_outbox_attempts_and_next_retry_grow_with_each_failure(store: Store) -> None:
    """attempts + 1 per failure, next retry = now + backoff; the queue time stays the first."""
    seen = []
    for now in (TS0, TS1, TS2, TS3):
        store.record_outcomes(outcomes=[Outcome.transient(_action(KEY1), f"503 at {now}")],
                              now=now)
        (entry,) = store.due(connector="events", now=now + DAY)
        seen.append((entry.attempts, entry.next_retry - now, entry.queued_at, entry.last_error))
    assert seen == [
        (1, 30.0, TS0, f"503 at {TS0}"),
        (2, 60.0, TS0, f"503 at {TS1}"),
        (3, 120.0, TS0, f"503 at {TS2}"),
        (4, 240.0, TS0, f"503 at {TS3}"),
    ]


def test_outbox_backoff_uses_the_injected_random_source(db: Path) -> None:
    draws = iter([0.5, 0.25])
    with _open(db, rand=lambda: next(draws)) as store:
        store.record_outcomes(outcomes=[Outcome.transient(_action(KEY1), "503"),
                                        Outcome.transient(_action(KEY2), "503")], now=TS0)
        retries = {e.action.key: e.next_retry - TS0 for e in store.due(connector="events",
                                                                       now=TS0 + DAY)}
    assert retries == {KEY1: pytest.approx(30.0 * 0.9), KEY2: pytest.approx(30.0 * 0.95)}


def test_outbox_caps_the_backoff(store: Store) -> None:
    for _ in range(12):
        store.record_outcomes(outcomes=[Outcome.transient(_action(KEY1), "503")], now=TS0)
    (entry,) = store.due(connector="events", now=TS0 + DAY)
    assert (entry.attempts, entry.next_retry) == (12, TS0 + 600.0)


def test_outbox_honours_a_larger_retry_after(store: Store) -> None:
    store.record_outcomes(outcomes=[
        Outcome.transient(_action(KEY1), "429", retry_after=900.0),
        Outcome.transient(_action(KEY2), "429", retry_after=1.0),
    ], now=TS0)
    retries = {e.action.key: e.next_retry for e in store.due(connector="events", now=TS0 + DAY)}
    assert retries == {KEY1: TS0 + 900.0, KEY2: TS0 + 30.0}


def test_due_returns_only_due_entries_oldest_first_within_the_limit(store: Store) -> None:
    store.record_outcomes(outcomes=[Outcome.transient(_action(KEY3), "503")], now=TS0)
    store.record_outcomes(outcomes=[Outcome.transient(_action(KEY1), "503")], now=TS1)
    store.record_outcomes(outcomes=[Outcome.transient(_action(KEY2), "503",
                                                      retry_after=DAY)], now=TS1)
    store.record_outcomes(outcomes=[Outcome.transient(_action(KEY3), "503")], now=TS2)
    # KEY3 was queued first (TS0), failed again at TS2: due at TS2+60; KEY1 due at TS1+30
    assert store.due(connector="events", now=TS0) == ()
    assert [e.action.key for e in store.due(connector="events", now=TS1 + 30)] == [KEY1]
    assert [e.action.key for e in store.due(connector="events", now=TS2 + 60)] == [KEY3, KEY1]
    assert [e.action.key for e in store.due(connector="events", now=TS2 + 60, limit=1)] == [
        KEY3]
    assert store.due(connector="events", now=TS2 + 60, limit=0) == ()
    assert [e.action.key for e in store.due(connector="events", now=TS1 + DAY)] == [
        KEY3, KEY1, KEY2]
    assert store.due(connector="cockpit", now=TS1 + DAY) == ()


def test_due_can_be_restricted_to_kinds(store: Store) -> None:
    store.record_outcomes(outcomes=[Outcome.transient(_action(KEY1, "start"), "503"),
                                    Outcome.transient(_action(KEY1, "stop"), "503")], now=TS0)
    assert [e.action.kind for e in store.due(connector="events", now=TS1,
                                             kinds=["stop"])] == ["stop"]
    assert store.due(connector="events", now=TS1, kinds=[]) == ()
    with pytest.raises(ValueError, match="limit"):
        store.due(connector="events", now=TS1, limit=-1)


def test_outbox_stats(store: Store) -> None:
    empty = store.outbox_stats(connector="events")
    assert (empty.depth, empty.oldest, empty.next_retry) == (0, None, None)
    store.record_outcomes(outcomes=[Outcome.transient(_action(KEY1), "503")], now=TS1)
    store.record_outcomes(outcomes=[Outcome.transient(_action(KEY2), "503"),
                                    Outcome.transient(_action(KEY1), "503")], now=TS2)
    stats = store.outbox_stats(connector="events")
    assert (stats.depth, stats.oldest, stats.next_retry) == (2, TS1, TS2 + 30.0)
    # what a resident loop waits for: the first entry due after a given time
    assert store.next_retry_after(connector="events", after=TS2) == TS2 + 30.0
    later = store.next_retry_after(connector="events", after=TS2 + 30.0)
    assert later is not None and later > TS2 + 30.0  # KEY1's second backoff is longer
    assert store.next_retry_after(connector="events", after=later) is None
    assert store.next_retry_after(connector="bank", after=0) is None


def test_a_delivery_or_permanent_failure_leaves_the_outbox(store: Store) -> None:
    store.record_outcomes(outcomes=[Outcome.transient(_action(KEY1), "503"),
                                    Outcome.transient(_action(KEY2), "503"),
                                    Outcome.transient(_action(KEY3), "503")], now=TS0)
    store.record_outcomes(outcomes=[Outcome.already_done(_action(KEY1), "422"),
                                    Outcome.permanent(_action(KEY2), "400 bad payload")],
                          now=TS1)
    assert store.queued(connector="events", kind="start") == {KEY3}
    assert store.delivered(connector="events", kind="start") == {KEY1}
    assert store.failed(connector="events", kind="start") == {KEY2}
    (failure,) = store.deliveries(connector="events", keys=[KEY2])
    assert (failure.status, failure.at, failure.detail) == (
        Status.PERMANENT, TS1, {"detail": "400 bad payload"})


def test_long_errors_are_clipped(store: Store) -> None:
    store.record_outcomes(outcomes=[Outcome.transient(_action(KEY1), "x" * 100_000)], now=TS0)
    (entry,) = store.due(connector="events", now=TS1 + DAY)
    assert len(entry.last_error) <= 2000 and entry.last_error.endswith("...")


# ---------------------------------------------------------------------------- durability


def test_a_second_store_on_the_same_file_sees_every_commit(db: Path) -> None:
    with _open(db) as first, _open(db) as second:
        first.record_outcomes(outcomes=[Outcome.done(_action(KEY1))], now=TS1,
                              watermarks={"events": TS1})
        assert second.delivered(connector="events", kind="start") == {KEY1}
        assert second.get_watermark(connector="events") == TS1


def test_a_process_killed_mid_batch_loses_nothing_committed(db: Path) -> None:
    """SIGKILL while the second batch is half written: the first is whole, the second absent."""
    script = textwrap.dedent(f"""
        import os, signal
        import slurm_sync.store
        from slurm_sync.actions import Action, Outcome
        store = slurm_sync.store.Store.open({str(db)!r})
        def action(key):
            return Action(connector="events", kind="start", key=key)
        store.record_outcomes(outcomes=[Outcome.done(action("a")),
                                        Outcome.transient(action("b"), "503")],
                              now={TS1}, watermarks={{"events": {TS1}}})
        real = slurm_sync.store._deliver
        def deliver(conn, row, *, now):
            real(conn, row, now=now)
            if row.key == "d":
                os.kill(os.getpid(), signal.SIGKILL)
        slurm_sync.store._deliver = deliver
        store.record_outcomes(outcomes=[Outcome.done(action("b")), Outcome.done(action("c")),
                                        Outcome.done(action("d")), Outcome.done(action("e"))],
                              now={TS2}, watermarks={{"events": {TS2}}})
        raise SystemExit("not killed")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(slurm_sync.store.__file__).parent.parent, timeout=60)
    assert done.returncode == -9, done.stderr
    with _open(db) as store:
        assert store.delivered(connector="events", kind="start") == {"a"}
        assert store.queued(connector="events", kind="start") == {"b"}
        assert store.get_watermark(connector="events") == TS1


# ---------------------------------------------------------------------------------- locks


def _hold_write_lock(db: Path) -> sqlite3.Connection:
    blocker = _connect(db)
    blocker.execute("BEGIN IMMEDIATE")
    blocker.execute("INSERT INTO watermarks VALUES ('blocker', 1.0, 1.0)")
    return blocker


def test_locked_database_is_retried_a_bounded_number_of_times_then_reported(db: Path) -> None:
    _open(db).close()
    sleeps: list[float] = []
    blocker = _hold_write_lock(db)
    try:
        with _open(db, busy_timeout=0.01, lock_retries=2, lock_backoff=0.05,
                   sleep=sleeps.append) as store:
            with pytest.raises(StoreError, match=r"locked .* gave up after 3 attempt"):
                store.record_outcomes(outcomes=[Outcome.done(_action(KEY1))], now=TS1)
            assert sleeps == [0.05, 0.1]
            # readers are not blocked by a writer (WAL)
            assert store.delivered(connector="events", kind="start") == frozenset()
    finally:
        blocker.rollback()
        blocker.close()
    with _open(db) as store:
        assert store.delivered(connector="events", kind="start") == frozenset()


def test_a_lock_released_during_the_backoff_lets_the_batch_through(db: Path) -> None:
    _open(db).close()
    blocker = _hold_write_lock(db)

    def sleep(_seconds: float) -> None:
        blocker.commit()  # the other process finishes its transaction

    try:
        with _open(db, busy_timeout=0.01, lock_retries=3, sleep=sleep) as store:
            store.record_outcomes(outcomes=[Outcome.done(_action(KEY1))], now=TS1,
                                  watermarks={"events": TS1})
            assert store.delivered(connector="events", kind="start") == {KEY1}
            assert store.get_watermark(connector="blocker") == 1.0
    finally:
        blocker.close()


def test_a_concurrent_opener_waits_for_a_migration_in_progress(tmp_path: Path) -> None:
    """A second process opening while the first holds the write lock retries, then succeeds."""
    db = tmp_path / "state.db"
    db.touch()
    blocker = _connect(db)
    blocker.execute("BEGIN IMMEDIATE")
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if blocker.in_transaction:
            blocker.rollback()

    try:
        with _open(db, busy_timeout=0.01, sleep=sleep) as store:
            assert store.schema_version == SCHEMA_VERSION
    finally:
        blocker.close()
    assert sleeps  # it met the lock and retried


# ------------------------------------------------------------------------------ read-only


def _every_write(store: Store) -> list[Any]:
    return [
        lambda: store.record_outcomes(outcomes=[Outcome.done(_action(KEY3))], now=TS4),
        lambda: store.set_watermark(connector="events", value=TS4, now=TS4),
        lambda: store.record_run(started=TS3, ended=TS4, exit_code=0),
        lambda: store.purge(older_than=TS4 + DAY),
    ]


def _populate(db: Path) -> None:
    with _open(db) as store:
        store.record_outcomes(outcomes=[Outcome.done(_action(KEY1)),
                                        Outcome.transient(_action(KEY2), "503")], now=TS1,
                              watermarks={"events": TS1})
        store.record_run(started=TS0, ended=TS1, exit_code=0)


def test_read_only_store_reads_everything_and_changes_nothing_on_disk(db: Path) -> None:
    _populate(db)
    before = _files(db.parent)
    with Store.open(db, read_only=True) as store:
        assert store.read_only
        assert store.delivered(connector="events", kind="start") == {KEY1}
        assert [e.action.key for e in store.due(connector="events", now=TS1 + DAY)] == [KEY2]
        assert store.get_watermark(connector="events") == TS1
        assert store.last_run() is not None
        for write in _every_write(store):
            with pytest.raises(StoreError, match="read-only"):
                write()
    assert _files(db.parent) == before


def test_read_only_store_next_to_an_open_writer(db: Path) -> None:
    """With a writer open (its -wal present), a dry run reads its commits, writes nothing."""
    _populate(db)
    with _open(db) as writer:
        writer.record_outcomes(outcomes=[Outcome.done(_action(KEY3))], now=TS2)
        main_file = (db.read_bytes(), db.stat().st_mtime_ns)
        with Store.open(db, read_only=True) as store:
            assert store.delivered(connector="events", kind="start") == {KEY1, KEY3}
            with pytest.raises(StoreError, match="read-only"):
                store.set_watermark(connector="events", value=TS4, now=TS4)
        assert (db.read_bytes(), db.stat().st_mtime_ns) == main_file
        assert writer.get_watermark(connector="events") == TS1


def test_read_only_store_without_a_database_is_empty_and_creates_nothing(
        tmp_path: Path) -> None:
    db = tmp_path / "not" / "yet" / "state.db"
    with Store.open(db, read_only=True) as store:
        assert store.get_watermark(connector="events") is None
        assert store.delivered(connector="events", kind="start") == frozenset()
        assert store.due(connector="events", now=TS1) == ()
        assert store.outbox_stats(connector="events").depth == 0
        assert store.last_run() is None
        for write in _every_write(store):
            with pytest.raises(StoreError, match="read-only"):
                write()
    assert list(tmp_path.iterdir()) == []


def test_memory_store_is_writable_and_empty() -> None:
    with Store.memory(backoff=NO_JITTER, rand=lambda: 0.0) as store:
        store.record_outcomes(outcomes=[Outcome.done(_action(KEY1))], now=TS1)
        assert store.delivered(connector="events", kind="start") == {KEY1}
        assert not store.read_only


# ----------------------------------------------------------------------------- migrations


def test_a_new_database_is_at_the_current_schema_version(db: Path) -> None:
    with _open(db) as store:
        assert store.schema_version == SCHEMA_VERSION == len(slurm_sync.store.MIGRATIONS)
    with _raw(db) as conn:
        rows = conn.execute("SELECT version, description FROM schema_version").fetchall()
    assert [v for v, _ in rows] == list(range(1, SCHEMA_VERSION + 1))
    assert all(description for _, description in rows)


def test_migration_versions_are_consecutive() -> None:
    assert [m.version for m in slurm_sync.store.MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


_V2 = Migration(
    version=SCHEMA_VERSION + 1,
    description="test: notes on runs",
    statements=("ALTER TABLE runs ADD COLUMN note TEXT NOT NULL DEFAULT ''",
                "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)"),
)


def _upgrade(monkeypatch: pytest.MonkeyPatch, *extra: Migration) -> None:
    migrations = (*slurm_sync.store.MIGRATIONS, *extra)
    monkeypatch.setattr(slurm_sync.store, "MIGRATIONS", migrations)
    monkeypatch.setattr(slurm_sync.store, "SCHEMA_VERSION", len(migrations))


def test_an_older_database_is_migrated_and_keeps_its_data(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _populate(db)
    _upgrade(monkeypatch, _V2)
    with _open(db) as store:
        assert store.schema_version == _V2.version
        assert store.delivered(connector="events", kind="start") == {KEY1}
        assert store.get_watermark(connector="events") == TS1
    with _raw(db) as conn:
        assert conn.execute("SELECT note FROM runs").fetchall() == [("",)]
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)


def test_migrations_run_one_transaction_each(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing migration is rolled back whole; the ones before it stay applied."""
    _populate(db)
    broken = Migration(version=_V2.version + 1, description="test: broken",
                       statements=("CREATE TABLE half (x)", "THIS IS NOT SQL"))
    _upgrade(monkeypatch, _V2, broken)
    with pytest.raises(StoreError, match=f"schema version {broken.version}"):
        _open(db)
    with _raw(db) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (
            _V2.version,)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "notes" in tables and "half" not in tables


def test_a_database_from_a_newer_version_is_refused_naming_both_versions(db: Path) -> None:
    _populate(db)
    newer = SCHEMA_VERSION + 7
    with _raw(db) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 'from the future')", (newer,))
    before = _files(db.parent)
    for read_only in (False, True):
        with pytest.raises(StoreError) as err:
            Store.open(db, read_only=read_only)
        message = str(err.value)
        assert f"schema version {newer}" in message
        assert f"version {SCHEMA_VERSION} that this slurm-sync supports" in message
        assert str(db) in message
    assert _files(db.parent) == before


def test_a_dry_run_of_an_upgrade_migrates_in_memory_only(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _populate(db)
    before = _files(db.parent)
    _upgrade(monkeypatch, _V2)
    with Store.open(db, read_only=True) as store:
        assert store.schema_version == _V2.version
        assert store.delivered(connector="events", kind="start") == {KEY1}
    assert _files(db.parent) == before


# ---------------------------------------------------------------------------------- purge


def test_purge_forgets_jobs_long_finished_and_old_runs(store: Store) -> None:
    old, running, queued, recent = (f"lab2411/{n}/{int(TS0)}" for n in (1, 2, 3, 4))
    store.record_outcomes(outcomes=[
        Outcome.done(_action(old, "start")), Outcome.done(_action(old, "stop")),
        Outcome.done(_action(running, "start")),
        Outcome.done(_action(queued, "start")), Outcome.transient(_action(queued, "stop"), "503"),
        Outcome.done(_action(recent, "start")),
        Outcome.done(_action(old, "start", connector="cockpit")),
        Outcome.permanent(_action(old, "stop", connector="cockpit"), "400"),
        Outcome.done(_action(recent, "start", connector="cockpit")),
        Outcome.done(_action(recent, "stop", connector="cockpit")),
    ], now=TS0)
    store.record_outcomes(outcomes=[Outcome.done(_action(recent, "stop"))], now=TS0 + 9 * DAY)
    store.record_run(started=TS0, ended=TS1, exit_code=0)
    store.record_run(started=TS2, ended=TS3, exit_code=0)

    for name in ("events", "cockpit"):  # as each cycle does before a purge
        store.open_runs(connector=name, opening=("start",), closing=("stop",))
    result = store.purge(older_than=TS0 + 7 * DAY, keep=[running])

    assert (result.deliveries, result.runs) == (4, 1)
    assert store.delivered(connector="events", kind="start") == {running, queued, recent}
    assert store.delivered(connector="events", kind="stop") == {recent}
    # a run whose stop was refused for good is still open (tracked, shown by status): kept
    assert store.delivered(connector="cockpit", kind="start") == {old}
    assert store.failed(connector="cockpit", kind="stop") == {old}
    assert store.queued(connector="events", kind="stop") == {queued}
    last = store.last_run()
    assert last is not None and last.started == TS2
    # the last run is kept whatever its age
    assert store.purge(older_than=TS4 + DAY).runs == 0
    assert store.last_run() == last


# ----------------------------------------------------------------------------- misusage


def test_times_must_be_finite_numbers(store: Store) -> None:
    with pytest.raises(ValueError, match="now"):
        store.record_outcomes(outcomes=[Outcome.done(_action())], now=float("nan"))
    with pytest.raises(ValueError, match="started"):
        store.record_run(started=float("inf"), ended=TS1, exit_code=0)
    with pytest.raises(ValueError, match="older_than"):
        store.purge(older_than=float("nan"))


def test_negative_run_counts_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="negative"):
        store.record_run(started=TS0, ended=TS1, exit_code=0,
                         counts=[RunCount("events", Status.DONE, -1)])
    assert store.last_run() is None
