"""A steady cycle over 10,000 running jobs that are all delivered already, against json.loads.

    python bench/cycle_bench.py [--jobs 10000] [--repeat 3]

Stand-in `squeue`/`sacct` scripts on a temporary bin_dir serve a synthetic 24.11-shape document
of N running jobs (bench/gen.py) and a quiet sacct window. A first cycle delivers every start to
the events connector (output /dev/null); then, in the same process, best of --repeat: one steady
cycle (run_cycle: Slurm calls, parse, store snapshot, plan, nothing to apply) and `json.loads` of
the same squeue output. Goal: cycle / json.loads <= 1.3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gen import generate  # noqa: E402
from standins import stand_ins  # noqa: E402

from slurm_sync.connector import SlurmNeeds  # noqa: E402
from slurm_sync.connectors.events import EventsConnector  # noqa: E402
from slurm_sync.engine import CycleOptions, run_cycle  # noqa: E402
from slurm_sync.slurm.reader import SlurmReader  # noqa: E402
from slurm_sync.slurm.run import Runner, SlurmCommands  # noqa: E402
from slurm_sync.store import Store  # noqa: E402


class FullRecords(EventsConnector):
    """The events sink reading squeue's full JSON every cycle (``detail="all"``): what this
    bench compares with json.loads. The product's delta path (the listing, then scontrol for
    new runs) is measured on the lab by bench/cycle_cost.py and bench/scale_bench.py."""

    def needs(self) -> SlurmNeeds:
        return dataclasses.replace(super().needs(), detail="all")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slurm-sync-cycle-bench-"))
    squeue_doc = work / "squeue.json"
    squeue_doc.write_text(json.dumps(generate("24.11", args.jobs, running_every=1), indent=2))
    sacct = json.loads((ROOT / "tests/fixtures/slurm/24.11/sacct.json").read_text())
    (work / "sacct.json").write_text(json.dumps({**sacct, "jobs": []}))
    bin_dir = stand_ins(work, squeue=squeue_doc, sacct=work / "sacct.json")

    def cycle(store: Store) -> tuple[float, int]:
        reader = SlurmReader(Runner(SlurmCommands(bin_dir=str(bin_dir))))
        connectors = {"events": FullRecords({"output": "/dev/null"})}
        started = time.perf_counter()
        report = run_cycle(reader, store, connectors, CycleOptions(), now=time.time())
        assert not report.slurm_errors, report.slurm_errors
        return time.perf_counter() - started, len(report.planned)

    with Store.open(str(work / "state.db")) as store:
        first, planned = cycle(store)
        print(f"first cycle: {planned} starts delivered in {first:.2f} s", flush=True)
        raw = squeue_doc.read_bytes()
        best_cycle = best_loads = float("inf")
        for _ in range(args.repeat):
            seconds, steady_planned = cycle(store)
            assert steady_planned == 0, "a steady cycle planned something"
            best_cycle = min(best_cycle, seconds)
            started = time.perf_counter()
            json.loads(raw)
            best_loads = min(best_loads, time.perf_counter() - started)
    ratio = best_cycle / best_loads
    print("| running jobs | squeue MB | steady cycle s | json.loads s | ratio (goal <= 1.3) |")
    print("|---|---|---|---|---|")
    print(f"| {args.jobs:,} | {len(raw) / 1e6:.1f} | {best_cycle:.2f} | {best_loads:.2f} | "
          f"{ratio:.2f} {'ok' if ratio <= 1.3 else 'MISSED'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
