"""The Buildkite connector's observe against the Buildkite emulator: it returns what it read
as one ``Observed`` value and keeps nothing of the cycle on the connector; it only reads, and
under ``--dry-run`` it does not even register the stack (the one write a Stacks connector
makes before reading)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.cli import main
from slurm_sync.connector import Direction, Scope, SlurmContext, Snapshot, View
from slurm_sync.connectors.buildkite import BuildkiteConnector, Observed, plan
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner, SlurmCommands
from tests.emulators.buildkite import Buildkite

NOW = 1_795_500_000.0
REGISTER = "/v3/stacks/register"


@pytest.fixture
def kite() -> Iterator[Buildkite]:
    with Buildkite() as emu:
        emu.add_queue("slurm")
        yield emu  # type: ignore[misc]


def _connector(tmp_path: Path, emu: Buildkite, mode: str, *, dry_run: bool) -> BuildkiteConnector:
    token = tmp_path / f"token-{mode}"
    token.write_text((emu.api_token if mode == "rest" else emu.agent_token) + "\n")
    token.chmod(0o600)
    settings: dict[str, Any] = {
        "mode": mode, "queue": "slurm",
        "agent": {"config": "/etc/bk.cfg", "build_root": str(tmp_path / "builds")},
        "batch_dir": str(tmp_path / "batches"),
    }
    if mode == "rest":
        settings["rest"] = {"url": emu.url, "organization": emu.default_org,
                            "token": {"file": str(token)}}
    else:
        settings["stacks"] = {"url": emu.url, "token": {"file": str(token)},
                              "stack_key": "hpc1"}
    connector = BuildkiteConnector(settings)
    # a Slurm that is never called: no build path to prune, no pending job to ask about
    reader = SlurmReader(Runner(SlurmCommands(bin_dir=str(tmp_path / "no-slurm"))))
    connector.bind(SlurmContext(reader=reader, cluster="c", dry_run=dry_run))
    return connector


def _view() -> View:
    return View(now=NOW, squeue_ok=True, sacct_ok=True)


def test_observe_under_dry_run_does_not_register_the_stack(
    tmp_path: Path, kite: Buildkite
) -> None:
    job = kite.add_build("app", jobs=[{"step_key": "a", "command": "true",
                                       "agent_query_rules": ["queue=slurm"]}]).job_ids[0]
    dry = _connector(tmp_path, kite, "stacks", dry_run=True)
    first = dry.observe(_view(), Snapshot())
    assert kite.count("POST", REGISTER) == 0
    # Buildkite does not know the stack yet: nothing read, nothing planned
    assert not first.remote.complete
    assert plan(_view(), Snapshot(), Direction.BOTH, Scope(), first, dry.config).actions == ()
    # a run that is not a dry run registers it, once per process
    real = _connector(tmp_path, kite, "stacks", dry_run=False)
    for _ in range(2):
        found = real.observe(_view(), Snapshot())
        assert found.remote.complete and [j.id for j in found.remote.scheduled] == [job]
    assert kite.count("POST", REGISTER) == 1
    # a dry run reads the registered stack as it stands, and registers nothing
    again = dry.observe(_view(), Snapshot())
    assert again.remote.complete and [j.id for j in again.remote.scheduled] == [job]
    assert kite.count("POST", REGISTER) == 1
    assert [s.method for s in kite.seen if s.path.startswith("/v3/stacks/hpc1")] == [
        "GET", "GET", "GET", "GET"]  # scheduled-jobs, each time: reads only
    dry.close()
    real.close()


@pytest.mark.parametrize("mode", ["rest", "stacks"])
def test_observe_returns_what_it_read_and_keeps_nothing_of_the_cycle(
    tmp_path: Path, kite: Buildkite, mode: str
) -> None:
    new = kite.add_build("app", jobs=[{"step_key": "a", "command": "true",
                                       "agent_query_rules": ["queue=slurm"]}])
    connector = _connector(tmp_path, kite, mode, dry_run=False)
    if mode == "stacks":
        connector.observe(_view(), Snapshot())  # registers: what the process keeps
    before = dict(vars(connector))
    observed = connector.observe(_view(), Snapshot())
    assert vars(connector) == before
    assert all(vars(connector)[k] is v for k, v in before.items())
    assert isinstance(observed, Observed) and observed.cluster == "c"
    assert observed.remote.complete
    assert [(j.id, j.pipeline, j.build) for j in observed.remote.scheduled] == [
        (new.job_ids[0], "app", new.number)]
    result = connector.plan(_view(), Snapshot(), Direction.BOTH, Scope(), observed=observed)
    assert [(a.kind, a.key) for a in result.actions] == [("submit", f"{new.job_ids[0]}#1")]
    connector.close()


def test_slurm_sync_dry_run_does_not_register_the_stack(
    tmp_path: Path, kite: Buildkite, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI tells the connector its run is a dry run (``SlurmContext.dry_run``): `slurm-sync
    --dry-run` reads the stack as it stands and registers nothing; the next real run does."""
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "slurm" / "24.11"
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**json.loads((fixture / "sacct.json").read_text()),
                                 "jobs": []}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("squeue", "sacct"):
        (bin_dir / name).write_text(f'#!/bin/sh\ncase "$1" in --version) echo "slurm '
                                    f'24.11.5";; *) exec cat {empty};; esac\n')
        (bin_dir / name).chmod(0o755)
    token = tmp_path / "agent-token"
    token.write_text(kite.agent_token + "\n")
    token.chmod(0o600)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "state_dir": str(tmp_path / "state"), "slurm": {"bin_dir": str(bin_dir)},
        "connectors": {"buildkite": {
            "mode": "stacks", "queue": "slurm",
            "stacks": {"url": kite.url, "token": {"file": str(token)}, "stack_key": "hpc1"},
            "agent": {"config": "/etc/bk.cfg", "build_root": str(tmp_path / "builds")},
            "batch_dir": str(tmp_path / "batches")}}}))
    kite.add_build("app", jobs=[{"step_key": "a", "command": "true",
                                 "agent_query_rules": ["queue=slurm"]}])
    assert main(["-c", str(config), "--dry-run", "-q"]) == 0
    assert kite.count("POST", REGISTER) == 0
    assert [(s.method, s.status) for s in kite.seen] == [("GET", 404)]  # stack not known
    kite.seen.clear()
    assert main(["-c", str(config), "--direction", "stop", "-q"]) == 0  # submits nothing
    assert kite.count("POST", REGISTER) == 1
    kite.seen.clear()
    capsys.readouterr()
    assert main(["-c", str(config), "--dry-run", "--json"]) == 0
    assert [s.method for s in kite.seen] == ["GET"]  # the registered stack, read only
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] and [a["kind"] for a in report["actions"]] == ["submit"]
