"""What one HTTP request costs the client in CPU, three ways, against the cc-backend emulator.

    python bench/http_cost.py [--requests 1000] [--repeat 2]

A start of 1,000 jobs into cc-backend is 1,000 requests; on a machine of 2 CPUs their client
CPU decides the cycle's wall time as much as the service's latency does (issue 14). Each way
sends the same start_job bodies one after the other to the emulator (tests/emulators/ccbackend.py,
1.5.4, no latency, in this process on loopback), and the client's CPU is the sending thread's own
(``RUSAGE_THREAD``: the emulator's threads are not counted):

- ``serviceclient``: slurm-sync's ``ServiceClient.post`` (requests' Session, as in production);
- ``session-trust-env``: the same with requests' ``trust_env`` back on (proxies and ~/.netrc
  looked up on each request, as before commit 74e6dd2);
- ``adapter``: requests' ``HTTPAdapter.send`` of a ``PreparedRequest``, without the Session
  (no cookies, redirects or hooks);
- ``urllib3``: urllib3's PoolManager, which requests is built on.

The ways alternate, ``--repeat`` rounds; the table gives the median per way.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import requests.adapters  # noqa: E402
import urllib3  # noqa: E402

from slurm_sync.http import ServiceClient  # noqa: E402
from tests.emulators.ccbackend import CCBackend  # noqa: E402

TOKEN = "bench-token"
HEADERS = {"X-Auth-Token": TOKEN, "Content-Type": "application/json"}
PATH = "/api/jobs/start_job/"


def body(i: int) -> dict[str, Any]:
    """A start_job body of the size the lab's one-core jobs have."""
    return {"jobId": 100_000 + i, "user": "root", "project": "root", "cluster": "bench",
            "subCluster": "main", "partition": "main", "arrayJobId": 0, "numNodes": 1,
            "numHwthreads": 1, "numAcc": 0, "shared": "none", "monitoringStatus": 1, "smt": 1,
            "walltime": 3600, "jobState": "running", "startTime": 1_796_000_000 + i,
            "duration": 0,
            "resources": [{"hostname": "node1", "hwthreads": [i % 1024]}],
            "metaData": {"jobScript": "#!/bin/sh\nsleep 600\n", "jobName": "fill-run",
                         "slurmInfo": "x" * 300}}


def senders(url: str) -> dict[str, Callable[[dict[str, Any]], int]]:
    client = ServiceClient(url, headers=HEADERS, retries=0)
    trusting = ServiceClient(url, headers=HEADERS, retries=0)
    trusting.session.trust_env = True
    session = requests.Session()
    session.headers.update(HEADERS)
    adapter = requests.adapters.HTTPAdapter()
    pool = urllib3.PoolManager()

    def via_adapter(payload: dict[str, Any]) -> int:
        prepared = requests.PreparedRequest()
        prepared.prepare(method="POST", url=url + PATH, headers=session.headers, json=payload)
        response = adapter.send(prepared, timeout=30)
        response.json()
        return response.status_code

    def via_urllib3(payload: dict[str, Any]) -> int:
        response = pool.request("POST", url + PATH, body=json.dumps(payload).encode(),
                                headers=HEADERS, timeout=30.0)
        json.loads(response.data)
        return response.status

    return {"serviceclient": lambda p: client.post(PATH, json=p).status,
            "session-trust-env": lambda p: trusting.post(PATH, json=p).status,
            "adapter": via_adapter, "urllib3": via_urllib3}


def thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {}
    offset = 0
    with CCBackend(version="1.5.4", clusters={"bench": {"subclusters": {"main": "*"}}},
                   tokens={TOKEN}) as emu:
        ways = senders(emu.url)
        for _ in range(args.repeat):
            for name, send in ways.items():
                codes: dict[int, int] = {}
                wall, cpu = time.perf_counter(), thread_cpu()
                for i in range(args.requests):
                    status = send(body(offset + i))
                    codes[status] = codes.get(status, 0) + 1
                wall, cpu = time.perf_counter() - wall, thread_cpu() - cpu
                offset += args.requests
                if set(codes) != {201}:
                    raise SystemExit(f"{name}: answers {codes}, not all 201")
                results.setdefault(name, []).append((wall, cpu))
                print(f"{name}: {args.requests} start_job, wall {wall:.2f} s, client CPU "
                      f"{cpu:.2f} s", flush=True)
    print("\n| way | client CPU ms per request (median) | wall ms per request (median) |")
    print("|---|---|---|")
    for name, runs in results.items():
        cpu = statistics.median(c for _, c in runs) * 1000 / args.requests
        wall = statistics.median(w for w, _ in runs) * 1000 / args.requests
        print(f"| {name} | {cpu:.2f} | {wall:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
