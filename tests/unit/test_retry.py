"""`slurm-sync retry`: actions refused for good are planned and sent again once what refused
them is fixed; ``--dry-run`` lists them and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slurm_sync.actions import Action, Outcome, Status
from slurm_sync.cli import main
from slurm_sync.connector import SlurmContext
from slurm_sync.connectors.clustercockpit import ClusterCockpitConnector
from slurm_sync.engine import CycleOptions, run_cycle
from slurm_sync.slurm.model import Job, JobState, NodeAllocation
from slurm_sync.store import Store, StoreError
from tests.emulators.ccbackend import CCBackend
from tests.unit.test_clustercockpit_runs import Jobs

TOKEN = "jwt-for-tests"
TS1 = 1_795_000_000.0
TS2 = TS1 + 3600


def _refuse(store: Store, connector: str, key: str, at: float, kind: str = "start") -> None:
    action = Action(connector, kind, key, {"job": {"jobId": 1}})
    store.record_outcomes(outcomes=[Outcome.permanent(action, f"400 {key}")], now=at)


def _filled() -> Store:
    store = Store.memory()
    _refuse(store, "clustercockpit", "lab/42/100", TS1)
    _refuse(store, "clustercockpit", "lab/42/100", TS1, kind="stop")
    _refuse(store, "clustercockpit", "lab/43/200", TS2)
    _refuse(store, "events", "lab/42/100", TS2)
    done = Action("clustercockpit", "start", "lab/44/300")
    store.record_outcomes(outcomes=[Outcome.done(done)], now=TS1)
    return store


def _refused(store: Store) -> set[tuple[str, str, str]]:
    return {(d.connector, d.key, d.kind) for c in store.connectors()
            for d in store.refusals(connector=c, limit=100)}


def test_requeue_refused_by_connector_job_and_time() -> None:
    store = _filled()
    everything = _refused(store)
    # a dry run lists and changes nothing
    listed = store.requeue_refused(connector="clustercockpit", dry_run=True)
    assert [(d.key, d.kind) for d in listed] == [
        ("lab/42/100", "start"), ("lab/42/100", "stop"), ("lab/43/200", "start")]
    assert _refused(store) == everything
    # a job's refused stop goes with its refused start
    gone = store.requeue_refused(connector="clustercockpit", job_ids=[42])
    assert {(d.key, d.kind) for d in gone} == {("lab/42/100", "start"), ("lab/42/100", "stop")}
    assert _refused(store) == {("clustercockpit", "lab/43/200", "start"),
                               ("events", "lab/42/100", "start")}
    # since: only those refused at or after it, of every connector
    gone = store.requeue_refused(since=TS2)
    assert {(d.connector, d.key) for d in gone} == {("clustercockpit", "lab/43/200"),
                                                    ("events", "lab/42/100")}
    assert _refused(store) == set()
    # what was delivered stays delivered
    assert store.delivered(connector="clustercockpit", kind="start") == {"lab/44/300"}
    # the next plan sees nothing done for them: they are planned again
    assert store.failed(connector="clustercockpit", kind="start") == frozenset()


def test_requeue_on_a_read_only_store_is_a_dry_run_only(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store.open(path) as store:
        _refuse(store, "clustercockpit", "lab/42/100", TS1)
    with Store.open(path, read_only=True) as store:
        assert len(store.requeue_refused(dry_run=True)) == 1
        with pytest.raises(StoreError, match="read-only"):
            store.requeue_refused()


def _job(job_id: int) -> Job:
    return Job(job_id=job_id, name="j", user="ada", account="p", partition="batch",
               cluster="lab", state=JobState.RUNNING, start_time=int(TS1) + job_id,
               submit_time=int(TS1) - 10, time_limit=10, cpus=1, hosts=("n1",), nodelist="n1",
               allocations=(NodeAllocation(hostname="n1", cpu_ids=(0,)),))


def test_refused_starts_are_sent_after_the_fix_and_a_retry(tmp_path: Path) -> None:
    """A wrong subcluster mapping gets every start refused (400, per job). After the fix,
    the refusals are requeued and the next run delivers them."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    reader = Jobs([_job(1), _job(2)])
    store = Store.memory()
    with CCBackend("1.4.4", clusters={"lab": {"subclusters": {"main": "*"}}},
                   tokens={TOKEN}) as emu:
        def connector(**extra: object) -> ClusterCockpitConnector:
            built = ClusterCockpitConnector({"url": emu.url, "token": {"file": str(token)},
                                             "cluster": "lab", "retries": 0, **extra})
            built.bind(SlurmContext(reader=reader, cluster="lab"))
            return built

        wrong = connector(subclusters={"^n": "gpu"})
        report = run_cycle(reader, store, {"clustercockpit": wrong}, CycleOptions(), now=TS2)
        assert {o.status for o in report.outcomes} == {Status.PERMANENT}
        again = run_cycle(reader, store, {"clustercockpit": connector()}, CycleOptions(),
                          now=TS2 + 60)
        assert again.outcomes == []  # refused for good: not sent again by itself
        assert len(store.requeue_refused(connector="clustercockpit")) == 2
        fixed = run_cycle(reader, store, {"clustercockpit": connector()}, CycleOptions(),
                          now=TS2 + 120)
        assert [o.status for o in fixed.outcomes] == [Status.DONE, Status.DONE]
        assert sorted(j["jobId"] for j in emu.all_jobs()) == [1, 2]


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"state_dir": str(tmp_path / "state")}))
    with Store.open(tmp_path / "state" / "state.db") as store:
        _refuse(store, "clustercockpit", "lab/42/100", TS1)
        _refuse(store, "clustercockpit", "lab/43/200", TS2)
        store.set_watermark(connector="clustercockpit", value=TS2, now=TS2)
    return config


def _left(tmp_path: Path) -> list[str]:
    with Store.open(tmp_path / "state" / "state.db", read_only=True) as store:
        return [d.key for d in store.refusals(connector="clustercockpit")]


def test_cli_retry_dry_run_lists_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    assert main(["-c", str(config), "retry", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lab/42/100" in out and "lab/43/200" in out and "would be planned again" in out
    assert sorted(_left(tmp_path)) == ["lab/42/100", "lab/43/200"]


def test_cli_retry_by_job_and_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    assert main(["-c", str(config), "retry", "--connector", "clustercockpit",
                 "--jobid", "43", "--since", "2026-01-01"]) == 0
    captured = capsys.readouterr()
    assert "lab/43/200" in captured.out and "lab/42/100" not in captured.out
    assert _left(tmp_path) == ["lab/42/100"]
    # The next window reaches back to the requeued run's start (200), even one that ended long
    # before the watermark; the run not requeued (42) does not pull it back further.
    assert "reaches back" in captured.out
    with Store.open(tmp_path / "state" / "state.db", read_only=True) as store:
        assert store.get_watermark(connector="clustercockpit") == 200
    assert main(["-c", str(config), "retry", "--since", str(int(TS1) + 1)]) == 0
    assert "nothing refused matches" in capsys.readouterr().out
    assert main(["-c", str(config), "retry", "--since", str(int(TS1))]) == 0
    assert _left(tmp_path) == []


def test_cli_retry_usage_errors_exit_2(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    assert main(["-c", str(config), "retry", "--connector", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["-c", str(config), "retry", "--since", "the other day"]) == 2
    assert "--since" in capsys.readouterr().err
    assert sorted(_left(tmp_path)) == ["lab/42/100", "lab/43/200"]
