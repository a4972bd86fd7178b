"""Bank: 10,000 finished jobs in one sacct window, reported into the allocation-service emulator
at 10 ms per request.

    python bench/bank_bench.py [--jobs 10000] [--latency 0.01] [--concurrency 4 16]

A stand-in `sacct` serves a 24.11-shape document of N completed jobs (copies of a captured
record with new ids and times; user alice, account lab, partition main) and a stand-in `squeue`
an empty queue. Each row is one cycle with a fresh store and a fresh emulator: every job is
reported at its start (POST) and its end (PUT), 2N requests. Reported: wall time, reports per
second, Slurm calls.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from standins import stand_ins  # noqa: E402

from slurm_sync.connector import SlurmContext  # noqa: E402
from slurm_sync.connectors.bank import BankConnector  # noqa: E402
from slurm_sync.engine import CycleOptions, run_cycle  # noqa: E402
from slurm_sync.slurm.reader import SlurmReader  # noqa: E402
from slurm_sync.slurm.run import Runner, SlurmCommands  # noqa: E402
from slurm_sync.store import Store  # noqa: E402
from tests.emulators.bank import Bank  # noqa: E402
from tests.emulators.base import Faults  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "slurm" / "24.11"


def _documents(work: Path, jobs: int, now: int) -> Path:
    sacct = json.loads((FIXTURES / "sacct.json").read_text())
    template = next(j for j in sacct["jobs"] if j["job_id"] == 14)  # 'ok': COMPLETED
    records = []
    for i in range(jobs):
        record = copy.deepcopy(template)
        record["job_id"] = 2_000_000 + i
        start = now - 3000 + (i % 1000)
        record["time"]["submission"] = start - 5
        record["time"]["start"] = start
        record["time"]["end"] = start + 60 + i % 600
        record["time"]["elapsed"] = 60 + i % 600
        records.append(record)
    (work / "sacct.json").write_text(json.dumps({**sacct, "jobs": records}))
    squeue = json.loads((FIXTURES / "squeue-running.json").read_text())
    (work / "squeue.json").write_text(json.dumps({**squeue, "jobs": []}))
    bin_dir = stand_ins(work, squeue=work / "squeue.json", sacct=work / "sacct.json")
    return bin_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.01)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slurm-sync-bank-bench-"))
    now = int(time.time())
    bin_dir = _documents(work, args.jobs, now)
    token = work / "token"
    token.write_text("bench\n")
    token.chmod(0o600)
    print(f"{args.jobs} finished jobs in one sacct window; emulator at "
          f"{args.latency * 1000:.0f} ms per request")
    print("| concurrency | requests | wall s | reports/s | charged | Slurm calls |")
    print("|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        with Bank(token="bench", faults=Faults(latency=args.latency)) as emu:
            emu.add_user("alice", 5001)
            emu.set_allocation("lab", "100000000")
            emu.set_user_allocation("lab", "alice", "100000000")
            reader = SlurmReader(Runner(SlurmCommands(bin_dir=str(bin_dir))))
            connector = BankConnector({
                "url": emu.url, "token": {"file": str(token)}, "prices": {"main": "1"},
                "unpriced": "refuse", "mode": "report", "concurrency": concurrency})
            connector.bind(SlurmContext(reader=reader, cluster="bench"))
            with Store.memory() as store:
                started = time.perf_counter()
                report = run_cycle(reader, store, {"bank": connector},
                                   CycleOptions(first_window=3600), now=now)
                seconds = time.perf_counter() - started
            connector.close()
            done = sum(o.status.delivered for o in report.outcomes)
            charged = sum(1 for i in range(args.jobs)
                          if (emu.job(2_000_000 + i) or {}).get("jobstatus") == "COMPLETED")
            print(f"| {concurrency} | {done} | {seconds:.1f} | {done / seconds:.0f} | "
                  f"{charged}/{args.jobs} | {len(reader.runner.calls)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
