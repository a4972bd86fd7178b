"""The Bank connector: cost rules, and cycles against the allocation-service emulator over real
HTTP (approve, hold, release, fail open or closed, reports that survive an outage)."""

from __future__ import annotations

import pwd
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from connectors.bank import BankConnector, Prices, actual_cost, cost, estimate
from sync.actions import Action, Outcome, Status
from sync.connector import SlurmContext
from sync.engine import CycleOptions, run_cycle
from sync.slurm.model import Job, JobState
from sync.slurm.parse import ParseResult
from sync.slurm.query import JobFilter, SacctWindow
from sync.slurm.reader import SlurmReader
from sync.slurm.run import Runner
from sync.store import Store
from tests.emulators.bank import Bank

NOW = 1_795_600_000
TOKEN = "bank-test-token"


def test_cost_is_price_cpus_hours_rounded_half_up() -> None:
    assert cost(Decimal("0.75"), 4, 5400) == Decimal("4.50")
    assert cost(Decimal("1"), 1, 18) == Decimal("0.01")  # 0.005 rounds up
    assert cost(Decimal("1"), 1, 17) == Decimal("0.00")
    assert cost(Decimal("2.67"), 0, 3600) == Decimal("0.00")


def test_unpriced_partitions_are_a_choice_and_multi_partition_takes_the_highest() -> None:
    free = Prices({"a": "1", "b": "2.5"}, "free")
    refuse = Prices({"a": "1", "b": "2.5"}, "refuse")
    assert free.of("a,b") == Decimal("2.5") and free.of("zz") == Decimal(0)
    assert refuse.of("a,zz") is None and refuse.of("b") == Decimal("2.5")
    job = Job(job_id=1, partition="zz", time_limit=60, cpus=2)
    assert estimate(job, refuse) == "partition zz has no price"
    assert estimate(Job(job_id=2, partition="a", cpus=2), free) == (
        "no time limit: the cost cannot be bounded")
    assert estimate(Job(job_id=3, partition="a,b", time_limit=30, cpus=2), free) == Decimal(
        "2.50")
    ended = Job(job_id=4, partition="b", cpus=3, start_time=NOW, end_time=NOW + 1200,
                tres_allocated={"cpu": 4})
    assert actual_cost(ended, free) == Decimal("3.33")  # 2.5 x 4 cpus x 1/3 h


class Slurm(SlurmReader):
    """squeue and sacct answered from lists the test sets; holds and releases recorded."""

    def __init__(self) -> None:
        super().__init__(Runner())
        self.active: list[Job] = []
        self.ended: list[Job] = []

    def squeue(self, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        return ParseResult([j for j in self.active if job_filter.matches(j)], [], None)  # type: ignore[arg-type]

    def sacct(self, window: SacctWindow, job_filter: JobFilter = JobFilter()) -> ParseResult:  # noqa: B008
        return ParseResult(list(self.ended), [], None)  # type: ignore[arg-type]


class FakeControl:
    def __init__(self) -> None:
        self.held: list[tuple[int, str]] = []
        self.released: list[int] = []

    def hold(self, ids: Any, comment: str | None = None) -> None:
        self.held += [(i, comment or "") for i in ids]

    def release(self, ids: Any, comment: str | None = "") -> None:
        self.released += list(ids)


@pytest.fixture
def bank() -> Iterator[Bank]:
    with Bank(token=TOKEN) as emu:
        emu.add_user("alice", 5001)
        emu.add_user("bob", 5002)
        emu.set_allocation("lab", "3.00")
        emu.set_user_allocation("lab", "alice", "3.00")
        emu.set_user_allocation("lab", "bob", "3.00")
        yield emu  # type: ignore[misc]


def _connector(tmp_path: Path, emu: Bank, **extra: Any) -> tuple[BankConnector, FakeControl]:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    connector = BankConnector({"url": emu.url, "token": {"file": str(token)},
                               "prices": {"main": "60"}, "unpriced": "refuse",
                               "mode": "hold", **extra})
    control = FakeControl()
    connector.bind(SlurmContext(reader=Slurm()))
    connector.control = control  # type: ignore[assignment]
    return connector, control


def _pending(job_id: int, user: str = "alice", minutes: int = 1, cpus: int = 1) -> Job:
    return Job(job_id=job_id, state=JobState.PENDING, user=user,
               uid={"alice": 5001, "bob": 5002}[user], account="lab", partition="main",
               time_limit=minutes, cpus=cpus, submit_time=NOW - 30, cluster="c")


def _cycle(connector: BankConnector, store: Store, slurm: Slurm, now: float = NOW) -> Any:
    return run_cycle(slurm, store, {"bank": connector}, CycleOptions(), now=now)


def test_jobs_that_together_would_overdraw_do_not_both_get_through(
    tmp_path: Path, bank: Bank
) -> None:
    connector, control = _connector(tmp_path, bank)
    slurm = Slurm()
    slurm.active = [_pending(1, minutes=2), _pending(2, "bob", minutes=2)]  # 2.00 SU each
    store = Store.memory()
    report = _cycle(connector, store, slurm)
    kinds = sorted((o.action.kind, o.action.key.split("/")[1]) for o in report.outcomes)
    assert kinds == [("approve", "1"), ("hold", "2")]
    assert control.held[0][0] == 2 and "cannot pay 2.00 SU (with 2.00 SU pending)" in (
        control.held[0][1])
    # the allocation is raised: the held job is released on the next cycle
    bank.set_allocation("lab", "10.00")
    # (each pending job's check counts the account's other approved pending jobs, for the
    # user's limit too: the API takes one cost, so the check errs on the safe side)
    bank.set_user_allocation("lab", "bob", "10.00")
    report = _cycle(connector, store, slurm, NOW + 60)
    assert control.released == [2]


def test_the_service_down_is_fail_open_or_fail_closed_and_logged(
    tmp_path: Path, bank: Bank
) -> None:
    bank.down = True
    opened, open_control = _connector(tmp_path, bank)
    closed, closed_control = _connector(tmp_path, bank, on_unreachable="fail_closed")
    slurm = Slurm()
    slurm.active = [_pending(5)]
    report = _cycle(opened, Store.memory(), slurm)
    assert [o.action.kind for o in report.outcomes] == ["approve"]
    assert "fail_open" in report.outcomes[0].detail and open_control.held == []
    _cycle(closed, Store.memory(), slurm)
    assert [i for i, _ in closed_control.held] == [5]


def test_report_mode_never_touches_jobs(tmp_path: Path, bank: Bank) -> None:
    connector, control = _connector(tmp_path, bank, mode="report")
    slurm = Slurm()
    slurm.active = [_pending(6, minutes=10)]  # 10 SU > 3
    _cycle(connector, Store.memory(), slurm)
    assert control.held == [] and control.released == []


def _only_alice(name: str) -> SimpleNamespace:
    if name != "alice":
        raise KeyError(name)
    return SimpleNamespace(pw_uid=5001)


def test_starts_and_ends_are_charged_and_an_outage_loses_nothing(
    tmp_path: Path, bank: Bank, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sacct's JSON has no uid: the owner is looked up by name, here without a real alice
    monkeypatch.setattr(pwd, "getpwnam", _only_alice)
    connector, _ = _connector(tmp_path, bank)
    slurm = Slurm()
    run = Job(job_id=7, state=JobState.RUNNING, user="alice", uid=5001, account="lab",
              partition="main", time_limit=2, cpus=1, submit_time=NOW - 100,
              start_time=NOW - 90, hosts=("n1",), cluster="c", node_count=1)
    slurm.active = [run]
    store = Store.memory()
    _cycle(connector, store, slurm)
    assert bank.job(7)["amount"] == "2.00" and bank.usage("lab") == Decimal("2.00")
    # it ends (90 s on 1 cpu at 60 SU/h = 1.50) while the service is down
    ended = Job(**{**run.__dict__, "state": JobState.COMPLETED, "end_time": NOW,
                   "source": "sacct", "uid": None})
    slurm.active, slurm.ended = [], [ended]
    bank.down = True
    report = _cycle(connector, store, slurm, NOW + 60)
    assert [o.status for o in report.outcomes] == [Status.TRANSIENT]
    bank.down = False
    for n in range(2, 6):
        _cycle(connector, store, slurm, NOW + 60 * n + 3600 * n)
    assert bank.job(7)["amount"] == "1.50" and bank.usage("lab") == Decimal("1.50")
    assert bank.job(7)["jobstatus"] == "COMPLETED"


def test_a_resent_start_is_already_there(tmp_path: Path, bank: Bank) -> None:
    connector, _ = _connector(tmp_path, bank)
    record = {"jobslurmid": "9", "userid": "5001", "accountid": "lab", "amount": "1.00",
              "jobstatus": "RUNNING", "partition": "main", "submitdate": "2026-11-28T00:00:00Z",
              "startdate": "2026-11-28T00:00:10Z"}
    action = Action("bank", "start", "c/9/1", {"record": record})
    first: Outcome = connector.apply(action)
    again: Outcome = connector.apply(action)
    assert (first.status, again.status) == (Status.DONE, Status.ALREADY_DONE)
    assert bank.usage("lab") == Decimal("1.00")
