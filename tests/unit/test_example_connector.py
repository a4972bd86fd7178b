"""A site's connector in a pip package of its own gets what the built-in ones get: the example
under examples/slurm-sync-motd is installed with pip into a temporary folder and driven through
the real command line (``python -m slurm_sync.cli`` in its own process, PYTHONPATH=that folder,
so importlib.metadata finds the package's dist-info and its entry point), against stand-in
``squeue``/``sacct`` printing Slurm 24.11 output captured in the lab.

Each test breaks when a seam does: discovery through the entry point, ``add_commands`` and
``CommandContext``, the connector's schema in config validation, its own ``kinds`` as the engine
treats them (``--direction``, the guard), ``observe``/``plan``/``Fact``, ``apply_many`` and the
store.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.actions import Status
from slurm_sync.connector import Direction, Fact, Scope, Snapshot, View
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.store import Delivery, Store
from tests.example_package import ROOT, install_example, slurm_sync

FIXTURES = ROOT / "tests" / "fixtures" / "slurm" / "24.11"
# squeue-running.json: jobs 3, 4 and 6 (alice) run; sacct.json: they and 14 others ended.
RUNNING = {3, 4, 6}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example installed by pip (no dependencies: slurm-sync is this checkout)."""
    return install_example(tmp_path_factory.mktemp("example"))


def _cli(site: Path | None, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return slurm_sync(site, *args, cwd=cwd)


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture
def slurm(tmp_path: Path) -> Path:
    """Stand-in squeue and sacct printing what Slurm 24.11 printed in the lab."""
    folder = tmp_path / "bin"
    folder.mkdir()
    _script(folder / "squeue", '[ "$1" = --version ] && { echo "slurm 24.11.5"; exit 0; }\n'
                               f'cat "{FIXTURES / "squeue-running.json"}"\n')
    _script(folder / "sacct", f'cat "{FIXTURES / "sacct.json"}"\n')
    return folder


def _config(tmp_path: Path, slurm: Path, **motd: Any) -> Path:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "state_dir": str(tmp_path / "state"),
        "slurm": {"bin_dir": str(slurm)},
        "connectors": {"motd": {"directory": str(tmp_path / "board"),
                                "motd_file": str(tmp_path / "motd"), **motd}},
    }))
    return config


def _plan(result: subprocess.CompletedProcess[str]) -> list[tuple[str, str, int]]:
    assert result.returncode == 0, result.stdout + result.stderr
    return [(a["connector"], a["kind"], int(a["key"].split("/")[1]))
            for a in json.loads(result.stdout)["actions"]]


def _deliveries(tmp_path: Path) -> tuple[Delivery, ...]:
    """What the state database records for the connector ``motd``."""
    store = Store.open(tmp_path / "state" / "state.db", read_only=True)
    try:
        return store.deliveries(connector="motd")
    finally:
        store.close()


def test_pip_installs_its_own_import_package_and_entry_point(site: Path) -> None:
    tops = {p.name for p in site.iterdir()}
    assert "slurm_sync_motd" in tops and "slurm_sync" not in tops, tops
    info = next(site.glob("slurm_sync_example_motd-*.dist-info"))
    entry_points = (info / "entry_points.txt").read_text()
    assert "[slurm_sync.connectors]" in entry_points
    assert "motd = slurm_sync_motd.connector:MotdConnector" in entry_points


def test_help_lists_its_subcommand_only_when_installed(site: Path, tmp_path: Path) -> None:
    installed = _cli(site, "--help", cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    assert "motd" in installed.stdout and "who is running what" in installed.stdout
    sub = _cli(site, "motd", "show", "--help", cwd=tmp_path)
    assert sub.returncode == 0 and "--user" in sub.stdout, sub.stderr
    without = _cli(None, "--help", cwd=tmp_path)
    assert without.returncode == 0 and "motd" not in without.stdout


def test_its_subcommand_reads_its_settings(site: Path, tmp_path: Path, slurm: Path) -> None:
    config = _config(tmp_path, slurm)
    empty = _cli(site, "-c", str(config), "motd", "show", cwd=tmp_path)
    assert empty.returncode == 0, empty.stderr
    assert f"no jobs on the board ({tmp_path / 'board'})" in empty.stdout
    as_json = _cli(site, "-c", str(config), "motd", "show", "--json", cwd=tmp_path)
    assert json.loads(as_json.stdout) == {"directory": str(tmp_path / "board"), "user": None,
                                          "lines": []}
    # Not configured: ctx.settings("motd") is a ConfigError, exit 2, naming what is missing.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"state_dir": str(tmp_path / "state"),
                                 "connectors": {"events": {"output": "-"}}}))
    missing = _cli(site, "-c", str(other), "motd", "show", cwd=tmp_path)
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "no enabled 'motd' connector" in missing.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "board").exists()


def test_a_wrong_key_in_its_settings_exits_2_naming_it(
    site: Path, tmp_path: Path, slurm: Path
) -> None:
    config = _config(tmp_path, slurm, exclude_user=["root"])
    for command in (("run",), ("check",), ("motd", "show")):
        result = _cli(site, "-c", str(config), *command, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stdout + result.stderr)
        assert "$.connectors.motd.exclude_user" in result.stderr, result.stderr
        assert "exclude_users" in result.stderr, "the loader suggests the right key"
    assert not (tmp_path / "state").exists() and not (tmp_path / "board").exists()
    relative = _config(tmp_path, slurm, directory="board")
    result = _cli(site, "-c", str(relative), "--dry-run", cwd=tmp_path)
    assert result.returncode == 2 and "$.connectors.motd.directory" in result.stderr


def test_dry_run_plans_its_own_kinds_and_changes_nothing(
    site: Path, tmp_path: Path, slurm: Path
) -> None:
    config = _config(tmp_path, slurm)
    planned = _plan(_cli(site, "-c", str(config), "run", "--dry-run", "--json", cwd=tmp_path))
    # Running in squeue: announced; sacct says the same runs ended: retired after, same cycle.
    assert planned == [*(("motd", "announce", j) for j in sorted(RUNNING)),
                       *(("motd", "retire", j) for j in (4, 6, 3))]  # in order of their end
    assert not (tmp_path / "state").exists() and not (tmp_path / "board").exists()
    assert not (tmp_path / "motd").exists()
    stops = _plan(_cli(site, "-c", str(config), "--direction", "stop", "--dry-run", "--json",
                       cwd=tmp_path))
    assert not [p for p in stops if p[1] == "announce"]
    assert stops == [], "nothing is on the board, so a stop-only run has nothing to retire"


def test_a_run_records_its_actions_and_facts_and_a_second_plans_nothing(
    site: Path, tmp_path: Path, slurm: Path
) -> None:
    config = _config(tmp_path, slurm)
    board = tmp_path / "board"
    # Starts only: the running jobs go on the board, and the motd shows them.
    first = _cli(site, "-c", str(config), "--direction", "start", "--json", cwd=tmp_path)
    assert _plan(first) == [("motd", "announce", j) for j in sorted(RUNNING)]
    assert {a["outcome"] for a in json.loads(first.stdout)["actions"]} == {"done"}
    files = sorted(p.name for p in board.iterdir())
    assert files == [f"lab2411-{j}-{s}.job" for j, s in
                     ((3, 1795321801), (4, 1795321804), (6, 1795321810))]
    motd = (tmp_path / "motd").read_text().splitlines()
    assert motd[0].startswith("Jobs running now")
    assert [line.split()[:3] for line in motd[1:]] == [
        ["alice", "3", "sleeper"], ["alice", "4", "gpu2"], ["alice", "6", "cores03"]]
    shown = _cli(site, "-c", str(config), "motd", "show", "-u", "alice", "--json", cwd=tmp_path)
    assert json.loads(shown.stdout)["lines"] == motd[1:]
    assert _cli(site, "-c", str(config), "motd", "show", "-u", "bob", "--json",
                cwd=tmp_path).returncode == 0

    records = _deliveries(tmp_path)
    announced = {int(d.key.split("/")[1]): d for d in records if d.kind == "announce"}
    assert {j for j, d in announced.items() if d.status is Status.DONE} == RUNNING
    # The other runs sacct shows ended never ran while a cycle looked: facts, not actions.
    facts = {j for j, d in announced.items() if d.status is Status.ALREADY_DONE}
    assert {14, 15, 16, 17} <= facts and not facts & RUNNING
    assert not [d for d in records if d.kind == "retire"], "a start-only run retires nothing"
    status = json.loads(_cli(site, "-c", str(config), "status", "--json", cwd=tmp_path).stdout)
    (row,) = [c for c in status["connectors"] if c["connector"] == "motd"]
    assert row["delivered"] == len(records) and row["outbox"] == 0 and row["refused"] == 0

    # Stops only, as a dry run: the ended runs on the board are retired, nothing is announced.
    stops = _plan(_cli(site, "-c", str(config), "--direction", "stop", "--dry-run", "--json",
                       cwd=tmp_path))
    assert sorted(stops) == [("motd", "retire", j) for j in sorted(RUNNING)]

    both = _cli(site, "-c", str(config), "--json", cwd=tmp_path)
    assert sorted(_plan(both)) == [("motd", "retire", j) for j in sorted(RUNNING)]
    assert list(board.iterdir()) == []
    assert (tmp_path / "motd").read_text().splitlines()[1:] == ["  (no jobs running)"]
    records = _deliveries(tmp_path)
    retired = {int(d.key.split("/")[1]): d.status for d in records if d.kind == "retire"}
    assert {j for j, s in retired.items() if s is Status.DONE} == RUNNING
    assert set(retired) == set(announced), "every run is settled on both sides"

    again = _cli(site, "-c", str(config), "--json", cwd=tmp_path)
    assert _plan(again) == [] and json.loads(again.stdout)["exit_code"] == 0
    assert len(_deliveries(tmp_path)) == len(records), "no new record either"
    status = json.loads(_cli(site, "-c", str(config), "status", "--json", cwd=tmp_path).stdout)
    (row,) = [c for c in status["connectors"] if c["connector"] == "motd"]
    assert row["delivered"] == len(records) and row["outbox"] == 0


def test_its_destructive_kind_is_held_when_slurm_fails(
    site: Path, tmp_path: Path, slurm: Path
) -> None:
    config = _config(tmp_path, slurm)
    assert _cli(site, "-c", str(config), "--direction", "start", "-q",
                cwd=tmp_path).returncode == 0
    _script(slurm / "squeue", "echo 'slurm_load_jobs error: Unable to contact slurm controller'"
                              " >&2\nexit 1\n")
    result = _cli(site, "-c", str(config), "--json", cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert not [a for a in json.loads(result.stdout)["actions"] if a["kind"] == "retire"]
    assert len(list((tmp_path / "board").iterdir())) == len(RUNNING), "the board is kept"


def test_plan_is_pure_and_uses_what_observe_saw(
    site: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``plan`` in this process, on values: a line already on the board (the state database
    was lost) and an excluded user's job are facts, not writes; observe's value is frozen."""
    monkeypatch.syspath_prepend(str(site))
    from slurm_sync_motd.connector import Board, MotdConnector

    motd = MotdConnector({"directory": str(tmp_path / "board"), "exclude_users": ["root"]})
    jobs = tuple(Job(job_id=i, user=u, cluster="c", state=JobState.RUNNING,
                     start_time=1_795_000_000 + i, hosts=("n1",), source="squeue")
                 for i, u in ((1, "alice"), (2, "root"), (3, "bob")))
    view = View(now=1_795_000_100, active=jobs, squeue_ok=True, sacct_ok=True)
    board = motd.observe(view, Snapshot())
    assert board == Board(frozenset()) and isinstance(board.files, frozenset)
    seen = Board(frozenset({"c-3-1795000003.job"}))
    plan = motd.plan(view, Snapshot(), Direction.BOTH, Scope(), observed=seen)
    assert plan == motd.plan(view, Snapshot(), Direction.BOTH, Scope(), observed=seen)
    assert [(a.kind, a.key) for a in plan.actions] == [("announce", "c/1/1795000001")]
    assert plan.facts == (
        Fact("announce", "c/2/1795000002", "user root is in exclude_users: not announced"),
        Fact("announce", "c/3/1795000003", "c-3-1795000003.job is on the board already"))
    assert motd.plan(view, Snapshot(), Direction.STOP, Scope(), observed=seen).actions == ()
