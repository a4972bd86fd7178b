"""Bank, mode native: one cycle over many accounts, each balance found through can_submit_job
and written as a QOS limit, with the allocation-service emulator at 10 ms per request.

    python bench/bank_native_bench.py [--accounts 200] [--users 2] [--latency 0.01]
                                      [--concurrency 4 16]

Stand-in `scontrol` and `sacctmgr` answer from prepared text: `sacctmgr show assoc` lists the
accounts with their users (root and daemon, users every Debian has), and `scontrol show
assoc_mgr` shows either no QOS yet (cold: the first cycle ever, every balance searched from
nothing and every QOS made) or each QOS at the limit its balance gives (steady: the cycle every
minute after). Writes go to a log, counted. Each row is one cycle with a fresh emulator.
"""

from __future__ import annotations

import argparse
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
USERS = (("root", 0), ("daemon", 1), ("bin", 2), ("sys", 3))
ALLOCATION = 1234.56  # SU per account; at 60 SU per cpu-hour, 1234 cpu-minutes


def _qos_text(accounts: list[str], steady: bool) -> str:
    if not steady:
        return "Current Association Manager state\n\nQOS Records\n\n"
    out = ["Current Association Manager state", "", "QOS Records", ""]
    for n, account in enumerate(accounts):
        out += [f"QOS=bank_{account}({n + 2})", "    UsageRaw=0.000000",
                "    GrpTRESMins=cpu=1234(0),mem=N(0),billing=N(0)",
                "    GrpTRESRunMins=cpu=N(0),mem=N(0),billing=N(0)"]
    return "\n".join(out) + "\n"


def _slurm(work: Path, accounts: list[str], users: int, steady: bool) -> Path:
    squeue = json.loads((FIXTURES / "squeue-running.json").read_text())
    (work / "squeue.json").write_text(json.dumps({**squeue, "jobs": []}))
    sacct = json.loads((FIXTURES / "sacct.json").read_text())
    (work / "sacct.json").write_text(json.dumps({**sacct, "jobs": []}))
    (work / "config.txt").write_text((FIXTURES / "scontrol-config.txt").read_text())
    (work / "qos.txt").write_text(_qos_text(accounts, steady))
    rows = []
    for account in accounts:
        default = f"bank_{account}" if steady else ""
        qos = f"{default},normal" if steady else "normal"
        rows.append(f"{account}||{qos}|{default}")
        rows += [f"{account}|{name}|{qos}|{default}" for name, _ in USERS[:users]]
    (work / "assoc.txt").write_text("\n".join(rows) + "\n")
    writes = work / "writes.log"
    return stand_ins(work, squeue=work / "squeue.json", sacct=work / "sacct.json", extra={
        "scontrol": f'case "$2" in config) exec cat {work}/config.txt;; '
                    f'*) exec cat {work}/qos.txt;; esac',
        "sacctmgr": f'case "$1" in -i) echo "$*" >> {writes};; *) exec cat {work}/assoc.txt;; '
                    f'esac'})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--users", type=int, default=2, choices=range(1, len(USERS) + 1))
    parser.add_argument("--latency", type=float, default=0.01)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    args = parser.parse_args()
    accounts = [f"acct{n:04d}" for n in range(args.accounts)]
    print(f"{args.accounts} accounts x {args.users} users; emulator at "
          f"{args.latency * 1000:.0f} ms per request")
    print("| cycle | concurrency | requests | requests/account | wall s | Slurm calls | "
          "sacctmgr writes |")
    print("|---|---|---|---|---|---|---|")
    for steady in (False, True):
        for concurrency in args.concurrency:
            work = Path(tempfile.mkdtemp(prefix="slurm-sync-bank-native-bench-"))
            bin_dir = _slurm(work, accounts, args.users, steady)
            token = work / "token"
            token.write_text("bench\n")
            token.chmod(0o600)
            with Bank(token="bench", faults=Faults(latency=args.latency)) as emu:
                for name, uid in USERS[:args.users]:
                    emu.add_user(name, uid)
                for account in accounts:
                    emu.set_allocation(account, ALLOCATION)
                    for name, _ in USERS[:args.users]:
                        emu.set_user_allocation(account, name, ALLOCATION)
                reader = SlurmReader(Runner(SlurmCommands(bin_dir=str(bin_dir))))
                connector = BankConnector({
                    "url": emu.url, "token": {"file": str(token)}, "prices": {"main": "60"},
                    "unpriced": "refuse", "mode": "native", "accounts": accounts,
                    "native": {"tres": "cpu", "su_per_tres_hour": "60"},
                    "concurrency": concurrency})
                connector.bind(SlurmContext(reader=reader, cluster="bench"))
                with Store.memory() as store:
                    started = time.perf_counter()
                    run_cycle(reader, store, {"bank": connector}, CycleOptions(), now=time.time())
                    seconds = time.perf_counter() - started
                connector.close()
                asked = emu.count("GET", "/can_submit_job/.*")
            log = work / "writes.log"
            writes = len(log.read_text().splitlines()) if log.exists() else 0
            calls = len(reader.runner.calls)
            print(f"| {'steady' if steady else 'cold'} | {concurrency} | {asked} | "
                  f"{asked / args.accounts:.1f} | {seconds:.2f} | {calls} | {writes} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
