"""The example site connector (examples/slurm-sync-motd, installed by pip into a folder of its
own) against real Slurm 22.05, 24.11 and 26.05: a running job goes on the board and into the
motd file, an excluded user's job is a recorded fact, and once Slurm says the job ended its
line is retired (the connector's own destructive stop-side kind)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from slurm_sync.actions import Status
from slurm_sync.store import Store
from tests.example_package import install_example, slurm_sync
from tests.lab.conftest import LabCluster

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_example(tmp_path_factory.mktemp("example"))


def _config(lab: LabCluster, tmp_path: Path) -> Path:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "state_dir": str(tmp_path / "state"),
        "first_window_seconds": 300,
        "slurm": {"bin_dir": lab.bin_dir},
        "connectors": {"motd": {"directory": str(tmp_path / "board"),
                                "motd_file": str(tmp_path / "motd"),
                                "exclude_users": ["bob"]}},
    }))
    return config


def _sync(site: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return slurm_sync(site, "-c", str(config), *args, cwd=config.parent)


def _actions(result: subprocess.CompletedProcess[str], job_ids: set[int]
             ) -> list[tuple[str, int, str]]:
    assert result.returncode == 0, result.stdout + result.stderr
    return [(a["kind"], int(a["key"].split("/")[1]), a["outcome"])
            for a in json.loads(result.stdout)["actions"]
            if int(a["key"].split("/")[1]) in job_ids]


def _records(tmp_path: Path, job_id: int) -> dict[str, Status]:
    store = Store.open(tmp_path / "state" / "state.db", read_only=True)
    try:
        return {d.kind: d.status for d in store.deliveries(connector="motd")
                if d.key.split("/")[1] == str(job_id)}
    finally:
        store.close()


def test_a_running_job_is_announced_and_retired_when_it_ends(
    lab: LabCluster, tmp_path: Path, site: Path
) -> None:
    config = _config(lab, tmp_path)
    job = lab.submit("#!/bin/sh\nsleep 600\n", "--job-name=motdlab", user="alice")
    other = lab.submit("#!/bin/sh\nsleep 600\n", "--job-name=hidden", user="bob")
    for job_id in (job, other):
        lab.wait_state(job_id, "RUNNING")

    first = _sync(site, config, "--json")
    assert _actions(first, {job, other}) == [("announce", job, "done")]
    (notice,) = (tmp_path / "board").glob(f"*-{job}-*.job")
    line = notice.read_text().strip()
    assert line.split()[:3] == ["alice", str(job), "motdlab"], line
    assert f"on {lab.node}" in line
    assert line in (tmp_path / "motd").read_text().splitlines()
    assert not list((tmp_path / "board").glob(f"*-{other}-*.job"))
    shown = _sync(site, config, "motd", "show", "-u", "alice", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["lines"] == [line], shown.stderr
    assert _records(tmp_path, job) == {"announce": Status.DONE}
    assert _records(tmp_path, other) == {"announce": Status.ALREADY_DONE}, "bob's is a fact"

    still = _sync(site, config, "--json")
    assert _actions(still, {job, other}) == [], "a running job is announced once"

    lab.cmd("scancel", str(job))
    lab.wait_state(job, "CANCELLED")
    lab.wait("sacct's window to show it ended", lambda: any(
        j["job_id"] == job and j.get("time", {}).get("end")
        for j in json.loads(lab.cmd("sacct", "--json", "-X", "-a", "-S", "now-300",
                                    "-E", "now"))["jobs"]))
    ended = _sync(site, config, "--json")
    assert _actions(ended, {job, other}) == [("retire", job, "done")]
    assert not notice.exists()
    assert line not in (tmp_path / "motd").read_text()
    assert _records(tmp_path, job) == {"announce": Status.DONE, "retire": Status.DONE}

    settled = _sync(site, config, "--json")
    assert _actions(settled, {job, other}) == []
    status = json.loads(_sync(site, config, "status", "--json").stdout)
    (row,) = [c for c in status["connectors"] if c["connector"] == "motd"]
    assert row["outbox"] == 0 and row["refused"] == 0 and row["delivered"] >= 3
