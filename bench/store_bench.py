"""The store's part of a steady cycle, with 1,000 and with 1,000,000 stored deliveries (issue 14).

    python bench/store_bench.py [--stored 1000 1000000] [--running 1000] [--repeat 5]

A steady cycle: ``running`` jobs whose starts were delivered long ago, nothing to send. What the
store costs it: the snapshot of one connector (open runs, the records of the cycle's jobs, the
outbox) and the empty batch of outcomes. The history is finished runs (a start and a stop each)
of other jobs. Both stores are built in one run and measured side by side, alternately; the
figure is the median of ``repeat`` cycles, and the target is the difference (<= 0.1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slurm_sync.connectors.events import EventsConnector
from slurm_sync.engine import _snapshot
from slurm_sync.store import Store

T0 = 1_790_000_000


def _build(path: Path, stored: int, running: int) -> None:
    """``stored`` delivery records: ``running`` open starts and finished runs for the rest."""
    import sqlite3

    Store.open(path).close()  # the schema
    finished = max(0, (stored - running) // 2)
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO deliveries (connector, key, kind, status, at, detail, job_id)"
            " VALUES ('events', ?, ?, 'done', ?, '{}', ?)",
            ((f"c/{job}/{T0 + job}", kind, float(T0 + job), job)
             for job in range(1, finished + 1) for kind in ("start", "stop")))
        conn.executemany(
            "INSERT INTO deliveries (connector, key, kind, status, at, detail, job_id)"
            " VALUES ('events', ?, 'start', 'done', ?, '{}', ?)",
            ((f"c/{job}/{T0 + job}", float(T0 + job), job)
             for job in range(10_000_000, 10_000_000 + running)))


def _cycle(store: Store, kinds: object, running: int) -> float:
    ids = range(10_000_000, 10_000_000 + running)
    began = time.perf_counter()
    snapshot = _snapshot(store, "events", kinds, ids)  # type: ignore[arg-type]
    store.record_outcomes(outcomes=[], now=float(T0 + 20_000_000))
    took = time.perf_counter() - began
    assert len(snapshot.delivered["start"]) == running, len(snapshot.delivered["start"])
    return took


def _cycle_everything(store: Store, kinds: object, running: int) -> float:
    """The snapshot as it was read before issue 14: every key of every kind."""
    began = time.perf_counter()
    for kind in kinds:  # type: ignore[attr-defined]
        store.delivered(connector="events", kind=kind)
        store.queued(connector="events", kind=kind)
        store.failed(connector="events", kind=kind)
    store.record_outcomes(outcomes=[], now=float(T0 + 20_000_000))
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stored", type=int, nargs="+", default=[1000, 1_000_000])
    parser.add_argument("--running", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    kinds = EventsConnector({"output": "-"}).kind_table()
    with tempfile.TemporaryDirectory() as tmp:
        stores = {}
        for stored in args.stored:
            path = Path(tmp) / f"state-{stored}.db"
            began = time.perf_counter()
            _build(path, stored, args.running)
            print(f"built {stored:>9,} deliveries in {time.perf_counter() - began:.1f} s "
                  f"({os.path.getsize(path) / 1e6:.0f} MB)", flush=True)
            stores[stored] = Store.open(path)
        times: dict[int, list[float]] = {n: [] for n in args.stored}
        before: dict[int, list[float]] = {n: [] for n in args.stored}
        for _ in range(args.repeat + 1):  # the first round warms the page cache
            for stored, store in stores.items():
                times[stored].append(_cycle(store, kinds, args.running))
                before[stored].append(_cycle_everything(store, kinds, args.running))
        figures = {n: statistics.median(t[1:]) for n, t in times.items()}
        everything = {n: statistics.median(t[1:]) for n, t in before.items()}
        for store in stores.values():
            store.close()
    low, high = min(args.stored), max(args.stored)
    for stored, took in figures.items():
        print(f"{stored:>9,} stored, {args.running:,} running: store part of a steady cycle "
              f"{took * 1000:.1f} ms (median of {args.repeat}); reading every key as before "
              f"issue 14: {everything[stored] * 1000:.1f} ms")
    print(f"difference {high:,} vs {low:,}: {(figures[high] - figures[low]) * 1000:+.1f} ms "
          f"(target <= 100 ms)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "snapshot": {str(k): v for k, v in figures.items()},
            "every_key": {str(k): v for k, v in everything.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
