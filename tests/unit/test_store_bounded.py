"""A store whose cost follows the cycle, not the history (issue 14): the open runs kept as
outcomes are recorded, a snapshot of the cycle's jobs only, and a purge that never forgets a run
still open or an action still queued."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import slurm_sync.store
from slurm_sync.actions import Action, Outcome
from slurm_sync.engine import CycleOptions, _snapshot, run_cycle
from slurm_sync.store import Store
from tests.unit.test_cycle_faults import T0, Recorder, Timeline

OPEN, CLOSE = ("start",), ("stop",)
DAY = 86400.0


def _key(job_id: int, start: int = 1_790_000_000) -> str:
    return f"c/{job_id}/{start}"


def _record(store: Store, *outcomes: Outcome, now: float = 1_790_000_100.0,
            kinds: bool = True) -> None:
    store.record_outcomes(outcomes=list(outcomes), now=now,
                          opening=OPEN if kinds else (), closing=CLOSE if kinds else ())


def _done(kind: str, key: str) -> Outcome:
    return Outcome.done(Action("events", kind, key, {}))


def test_open_runs_follow_starts_and_stops_and_ignore_refusals() -> None:
    store = Store.memory()
    assert store.open_runs(connector="events", opening=OPEN, closing=CLOSE) == frozenset()
    _record(store, _done("start", _key(1)), _done("start", _key(2)),
            Outcome.permanent(Action("events", "start", _key(3), {}), "422"))
    _record(store, _done("stop", _key(1)), Outcome.transient(
        Action("events", "stop", _key(2), {}), "503"))
    assert store.open_runs(connector="events", opening=OPEN, closing=CLOSE) == {_key(2)}
    _record(store, _done("start", _key(3)))  # the refused start delivered after a retry
    assert store.open_runs(connector="events", opening=OPEN, closing=CLOSE) == {
        _key(2), _key(3)}


def test_open_runs_are_rebuilt_when_the_kinds_change_or_were_not_given() -> None:
    store = Store.memory()
    store.open_runs(connector="events", opening=OPEN, closing=CLOSE)  # built, empty
    _record(store, _done("announce", _key(1)), _done("start", _key(2)), kinds=False)
    # recorded without the kinds: the next read rebuilds from the deliveries
    assert store.open_runs(connector="events", opening=OPEN, closing=CLOSE) == {_key(2)}
    # a connector that now says "announce" opens a run too
    assert store.open_runs(connector="events", opening=("announce", "start"),
                           closing=CLOSE) == {_key(1), _key(2)}


def test_a_snapshot_reads_the_cycles_jobs_the_open_runs_and_keys_that_name_no_job() -> None:
    store = Store.memory()
    connector = Recorder()
    kinds = connector.kind_table()
    _record(store, _done("start", _key(1)), _done("stop", _key(1)),  # long finished
            _done("start", _key(2)),  # still open, its job not in this cycle's answers
            _done("start", _key(3)), _done("stop", _key(3)),  # in this cycle
            _done("start", "pipeline#7"))  # a key of the connector's own form
    snapshot = _snapshot(store, "events", kinds, job_ids={3})
    assert snapshot.delivered["start"] == {_key(2), _key(3), "pipeline#7"}
    assert snapshot.delivered["stop"] == {_key(3)}


def test_purge_forgets_finished_runs_but_not_open_ones_nor_the_outbox() -> None:
    store = Store.memory()
    old, now = 1_790_000_000.0, 1_790_000_000.0 + 30 * DAY
    _record(store, _done("start", _key(1)), _done("stop", _key(1)),
            _done("start", _key(2)),  # a job that runs for a month
            _done("start", _key(3)), now=old)
    _record(store, Outcome.transient(Action("events", "stop", _key(3), {}), "503"), now=old)
    # what is open cannot be told before the open runs were built: nothing goes
    assert store.purge(older_than=now - 14 * DAY).deliveries == 0
    store.open_runs(connector="events", opening=OPEN, closing=CLOSE)  # as each cycle does
    result = store.purge(older_than=now - 14 * DAY)
    assert result.deliveries == 2
    assert store.delivered(connector="events", kind="start") == {_key(2), _key(3)}
    assert store.queued(connector="events", kind="stop") == {_key(3)}


def test_a_purge_is_due_once_per_interval() -> None:
    store = Store.memory()
    assert store.purge_due(now=1000.0, every=3600)
    assert not store.purge_due(now=2000.0, every=3600)
    assert store.purge_due(now=4600.0, every=3600)


def test_a_job_running_longer_than_the_retention_is_not_started_again() -> None:
    """The cycle purges records older than the retention; the start of a job still running
    is the only record of its run, older than that, and must stay."""
    slurm = Timeline([(5, T0 + 5, None), (6, T0 + 6, T0 + 60)])
    store = Store.memory()
    sink = Recorder()
    options = CycleOptions(retention=2 * DAY)
    for now in (T0 + 10, T0 + 70, T0 + 3 * DAY, T0 + 3 * DAY + 4000):
        slurm.now = int(now)
        run_cycle(slurm, store, {"events": sink}, options, now=float(now))
    assert sink.written == [("start", f"c/5/{T0 + 5}"), ("start", f"c/6/{T0 + 6}"),
                            ("stop", f"c/6/{T0 + 6}")]
    assert store.delivered(connector="events", kind="start") == {f"c/5/{T0 + 5}"}


def test_the_migration_fills_the_job_ids_of_an_older_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "state.db"
    monkeypatch.setattr(slurm_sync.store, "MIGRATIONS", slurm_sync.store.MIGRATIONS[:3])
    monkeypatch.setattr(slurm_sync.store, "SCHEMA_VERSION", 3)
    Store.open(db).close()  # schema version 3: no job_id column yet
    monkeypatch.undo()
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO deliveries (connector, key, kind, status, at)"
                         " VALUES ('events', ?, 'start', 'done', 1790000100)",
                         [(_key(42),), ("bk#1",)])
    with Store.open(db) as store:
        assert store.schema_version == 4
        snapshot = _snapshot(store, "events", Recorder().kind_table(), job_ids={42})
        assert snapshot.delivered["start"] == {_key(42), "bk#1"}
    with sqlite3.connect(db) as conn:
        assert sorted(conn.execute("SELECT key, job_id FROM deliveries").fetchall()) == [
            ("bk#1", None), (_key(42), 42)]


def test_a_dry_run_reads_open_runs_without_writing(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with Store.open(db) as store:
        _record(store, _done("start", _key(1)), kinds=False)
    with Store.open(db, read_only=True) as store:
        assert store.open_runs(connector="events", opening=OPEN, closing=CLOSE) == {_key(1)}


def test_a_week_of_cycles_keeps_the_state_file_flat(tmp_path: Path) -> None:
    """A week of hourly cycles, 40 short jobs an hour, records kept two days: the deliveries
    stop growing once the retention is reached, and the file with them (SQLite reuses the
    pages the purge frees)."""
    hour = 3600
    runs = [(n + 1, T0 + (n // 40) * hour + (n % 40) * 60, T0 + (n // 40) * hour + (n % 40) * 60
             + 300) for n in range(7 * 24 * 40)]
    slurm = Timeline(runs)
    sink = Recorder()
    options = CycleOptions(retention=2 * DAY, first_window=hour)
    sizes: dict[int, tuple[int, int]] = {}
    with Store.open(tmp_path / "state.db") as store:
        for cycle in range(1, 7 * 24 + 1):
            slurm.now = T0 + cycle * hour
            run_cycle(slurm, store, {"events": sink}, options, now=float(slurm.now))
            if cycle % 24 == 0:
                count = sum(store.delivery_counts(connector="events").values())
                sizes[cycle // 24] = (count, (tmp_path / "state.db").stat().st_size)
    assert len(sink.written) == 2 * len(runs)  # nothing lost on the way
    (day3, size3), (day7, size7) = sizes[3], sizes[7]
    # two days of jobs (a start and a stop each), and up to two hours more between purges
    assert max(day3, day7) <= 2 * 40 * (2 * 24 + 2) and abs(day7 - day3) <= 2 * 40 * 2, sizes
    assert size7 <= size3 * 1.1, sizes
