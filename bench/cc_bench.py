"""ClusterCockpit: 1,000 new running jobs into the cc-backend emulator at 10 ms per request.

    python bench/cc_bench.py [--jobs 1000] [--latency 0.01] [--concurrency 1 4 16]

Stand-in `squeue`/`sacct` scripts on a temporary bin_dir serve a synthetic 24.11-shape document
of N running jobs (bench/gen.py) and a quiet sacct window; a temporary StateSaveLocation holds
each job's script, as slurmctld's does. For each concurrency setting, in one run: one cycle with
a fresh store and a fresh emulator (cc-backend 1.5.4), timed from the first Slurm call to the
last outcome recorded. Reported: wall time, start_job requests per second, and the Slurm
subprocesses the cycle ran (the goal: a constant, not one per job). One more cycle without a
StateSaveLocation shows the price of the scontrol fallback for scripts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gen import generate  # noqa: E402
from standins import stand_ins  # noqa: E402

from slurm_sync.connector import SlurmContext, SlurmNeeds  # noqa: E402
from slurm_sync.connectors.clustercockpit import ClusterCockpitConnector  # noqa: E402
from slurm_sync.engine import CycleOptions, run_cycle  # noqa: E402
from slurm_sync.slurm.reader import SlurmReader  # noqa: E402
from slurm_sync.slurm.run import Runner, SlurmCommands  # noqa: E402
from slurm_sync.store import Store  # noqa: E402
from tests.emulators.base import Faults  # noqa: E402
from tests.emulators.ccbackend import CCBackend  # noqa: E402

TOKEN = "bench-token"


def _stand_ins(work: Path, jobs: int) -> tuple[Path, Path, list[int]]:
    document = generate("24.11", jobs, running_every=1)
    squeue_doc = work / "squeue.json"
    squeue_doc.write_text(json.dumps(document))
    sacct = json.loads((ROOT / "tests/fixtures/slurm/24.11/sacct.json").read_text())
    (work / "sacct.json").write_text(json.dumps({**sacct, "jobs": []}))
    bin_dir = stand_ins(work, squeue=squeue_doc, sacct=work / "sacct.json", extra={
        "scontrol": "echo '#!/bin/sh'; echo 'srun ./app'", "sinfo": "exit 0"})
    state = work / "statesave"
    ids = [int(r["job_id"]) for r in document["jobs"]]
    for job_id in ids:
        folder = state / f"hash.{job_id % 10}" / f"job.{job_id}"
        folder.mkdir(parents=True)
        (folder / "script").write_bytes(b"#!/bin/sh\n#SBATCH -N 1\nsrun ./app\n\0")
        (folder / "environment").write_bytes(b"HOME=/home/u\0PATH=/usr/bin\0")
    return bin_dir, state, ids


def _hosts(document_path: Path) -> list[str]:
    jobs = json.loads(document_path.read_text())["jobs"]
    return sorted({r["nodes"] for r in jobs})


class FullRecords(ClusterCockpitConnector):
    """The connector reading squeue's full JSON (``detail="all"``), as the stand-ins serve it:
    this bench measures sending and planning; the product's delta read path is measured on
    the lab by bench/cycle_cost.py."""

    def needs(self) -> SlurmNeeds:
        return dataclasses.replace(super().needs(), detail="all")


def _one(bin_dir: Path, state: Path | None, hosts: list[str], jobs: int, latency: float,
         concurrency: int, work: Path) -> tuple[float, int, int, int]:
    token = work / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    clusters = {"bench": {"subclusters": {"main": "*"}}}
    with CCBackend(version="1.5.4", clusters=clusters, tokens={TOKEN},
                   faults=Faults(latency=latency)) as emu:
        reader = SlurmReader(Runner(SlurmCommands(bin_dir=str(bin_dir))),
                             state_save_location=str(state) if state else None)
        connector = FullRecords({
            "url": emu.url, "token": {"file": str(token)}, "cluster": "bench",
            "concurrency": concurrency, "reconcile": "never"})
        connector.bind(SlurmContext(reader=reader, cluster="bench"))
        with Store.memory() as store:
            started = time.perf_counter()
            report = run_cycle(reader, store, {"clustercockpit": connector}, CycleOptions(),
                               now=time.time())
            seconds = time.perf_counter() - started
        connector.close()
        assert not report.slurm_errors, report.slurm_errors
        done = sum(o.status.delivered for o in report.outcomes)
        sent = emu.count("POST", "/api/jobs/start_job/")
    return seconds, done, sent, len(reader.runner.calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.01)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slurm-sync-cc-bench-"))
    bin_dir, state, _ = _stand_ins(work, args.jobs)
    hosts = _hosts(work / "squeue.json")
    print(f"{args.jobs} running jobs on {len(hosts)} hosts; cc-backend 1.5.4 emulator, "
          f"{args.latency * 1000:.0f} ms per request; {os.cpu_count()} CPUs", flush=True)
    print("| concurrency | scripts from | wall s | start_job req/s | delivered | "
          "Slurm subprocesses |")
    print("|---|---|---|---|---|---|")
    runs = [(c, state) for c in args.concurrency] + [(max(args.concurrency), None)]
    for concurrency, where in runs:
        seconds, done, sent, calls = _one(bin_dir, where, hosts, args.jobs, args.latency,
                                          concurrency, work)
        source = "StateSaveLocation" if where else "scontrol (fallback)"
        print(f"| {concurrency} | {source} | {seconds:.2f} | {sent / seconds:.0f} | "
              f"{done}/{args.jobs} | {calls} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
