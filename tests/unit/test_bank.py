"""The Bank connector: cost rules, and whole cycles (observe, plan, apply, the store) against the
allocation-service emulator over real HTTP (approve, hold, release, fail open or closed, reports
that survive an outage). The plan alone, called with values, is test_bank_plan.py's."""

from __future__ import annotations

import pwd
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from slurm_sync.actions import Action, Outcome, Status
from slurm_sync.connector import SlurmContext, Snapshot, View, delivery_key
from slurm_sync.connectors.bank import BankConnector
from slurm_sync.connectors.bank.cost import actual_cost, cost, estimate
from slurm_sync.connectors.bank.limits import Limit, unsettled_su
from slurm_sync.connectors.bank.qos import AccountQos, Enforcement, QosAdmin, QosUsage
from slurm_sync.connectors.bank.settings import NativeSettings, Prices
from slurm_sync.engine import CycleOptions, run_cycle
from slurm_sync.errors import ConfigError, SlurmCommandError
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.parse import ParseResult
from slurm_sync.slurm.query import JobFilter, SacctWindow
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner
from slurm_sync.store import Store
from tests.emulators.bank import Bank
from tests.standin_listing import ListsFromSqueue

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


class Slurm(ListsFromSqueue, SlurmReader):
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
    kinds = sorted((o.action.kind, o.action.key.split("/")[1])
                   for o in (*report.facts, *report.outcomes))
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
    assert [o.action.kind for o in (*report.facts, *report.outcomes)] == ["approve"]
    assert "fail_open" in report.facts[0].detail and open_control.held == []
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


def _requeued(job_id: int) -> tuple[Job, Job]:
    """A job's two runs as sacct lists them: 60 s requeued, then 120 s completed (1 cpu at
    60 SU/h: 1.00 and 2.00 SU)."""
    common: dict[str, Any] = {
        "job_id": job_id, "user": "alice", "account": "lab", "partition": "main", "cpus": 1,
        "submit_time": NOW - 400, "hosts": ("n1",), "cluster": "c", "node_count": 1,
        "source": "sacct"}
    return (Job(**common, state=JobState.REQUEUED, start_time=NOW - 300, end_time=NOW - 240),
            Job(**common, state=JobState.COMPLETED, start_time=NOW - 200, end_time=NOW - 80,
                restart_count=1))


def test_a_requeued_jobs_runs_are_all_charged_on_its_one_record_in_order(
    tmp_path: Path, bank: Bank, monkeypatch: pytest.MonkeyPatch
) -> None:
    """myBRC keeps one record per job id. Run 1 (60 s, requeued) and run 2 (120 s) are both
    ended when the syncer first sees them: run 1's end goes first, run 2's is added to it on
    the next cycle, and a repeat of run 2's report (a lost reply) adds nothing."""
    monkeypatch.setattr(pwd, "getpwnam", _only_alice)
    bank.set_allocation("lab", "100.00")
    bank.set_user_allocation("lab", "alice", "100.00")
    connector, _ = _connector(tmp_path, bank)
    first, second = _requeued(8)
    slurm = Slurm()
    slurm.ended = [second, first]
    store = Store.memory()
    report = _cycle(connector, store, slurm)
    stops = [o for o in report.outcomes if o.action.kind == "stop"]
    assert [o.action.key for o in stops] == [delivery_key(first)]
    assert bank.job(8)["amount"] == "1.00"
    report = _cycle(connector, store, slurm, NOW + 60)
    stops = [o for o in report.outcomes if o.action.kind == "stop"]
    assert [(o.action.key, o.status) for o in stops] == [(delivery_key(second), Status.DONE)]
    record = bank.job(8)
    assert record["amount"] == "3.00" and record["jobstatus"] == "COMPLETED"
    assert record["startdate"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 200))
    assert bank.usage("lab") == Decimal("3.00")
    again = connector.apply(stops[0].action)
    assert again.status is Status.ALREADY_DONE and bank.usage("lab") == Decimal("3.00")
    assert _cycle(connector, store, slurm, NOW + 120).outcomes == []


def test_a_later_runs_end_waits_while_an_earlier_runs_end_is_in_the_outbox(
    tmp_path: Path, bank: Bank, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pwd, "getpwnam", _only_alice)
    bank.set_allocation("lab", "100.00")
    bank.set_user_allocation("lab", "alice", "100.00")
    connector, _ = _connector(tmp_path, bank)
    first, second = _requeued(9)
    slurm = Slurm()
    slurm.ended = [first]
    store = Store.memory(rand=lambda: 0.0)
    bank.down = True
    _cycle(connector, store, slurm)  # run 1's end is queued (due again in 30 s)
    bank.down = False
    slurm.ended = [first, second]
    report = _cycle(connector, store, slurm, NOW + 10)
    assert [o.action.kind for o in report.outcomes if o.action.kind == "stop"] == []
    report = _cycle(connector, store, slurm, NOW + 40)
    assert [o.action.key for o in report.outcomes if o.action.kind == "stop"] == [
        delivery_key(first)]
    _cycle(connector, store, slurm, NOW + 50)
    assert bank.job(9)["amount"] == "3.00" and bank.usage("lab") == Decimal("3.00")


# --- mode native ---------------------------------------------------------------------------------


class FakeQos(QosAdmin):
    """Slurm's QOS side in memory: what sacctmgr would write and assoc_mgr would show."""

    def __init__(self, users: tuple[str, ...] = ("alice", "bob")) -> None:
        super().__init__(Runner())
        self.qos: dict[str, QosUsage] = {}
        self.default = ""
        self.users = users
        self.writes: list[tuple[str, ...]] = []
        self.broken = False

    def enforcement(self) -> Enforcement:
        if self.broken:
            raise SlurmCommandError(["scontrol"], 1, "slurmctld down")
        return Enforcement(frozenset({"associations", "limits", "qos", "safe"}),
                           "priority/multifactor", "c")

    def usage(self, names: Any) -> dict[str, QosUsage]:
        return {n: u for n, u in self.qos.items() if n in set(names)}

    def accounts(self, accounts: Any) -> dict[str, AccountQos]:
        qos = frozenset({self.default, "normal"} - {""})
        return {a: AccountQos(a, qos, self.default, self.users) for a in accounts}

    def create(self, name: str, tres: str, minutes: int | None) -> None:
        self.writes.append(("create", name, f"{tres}={minutes}"))
        self.qos[name] = QosUsage(name, {tres: minutes}, {tres: 0}, {tres: 0})

    def set_limit(self, name: str, tres: str, minutes: int | None) -> None:
        self.writes.append(("set", name, f"{tres}={minutes}"))
        old = self.qos[name]
        self.qos[name] = QosUsage(name, {tres: minutes}, old.used, old.running)

    def attach(self, name: str, account: str, users: Any = ()) -> None:
        self.writes.append(("attach", name, account))
        self.default = name


def _native(tmp_path: Path, emu: Bank) -> tuple[BankConnector, FakeQos]:
    connector, _ = _connector(tmp_path, emu, mode="native", accounts=["lab"],
                              native={"tres": "cpu", "su_per_tres_hour": "60"})
    qos = FakeQos()
    connector.qos_admin = qos
    return connector, qos


def _running(job_id: int, minutes: int = 2, user: str = "alice") -> Job:
    return Job(job_id=job_id, state=JobState.RUNNING, user=user,
               uid={"alice": 5001, "bob": 5002}[user], account="lab", partition="main",
               time_limit=minutes, cpus=1, submit_time=NOW - 100, start_time=NOW - 90,
               hosts=("n1",), cluster="c", node_count=1)


def test_native_needs_its_accounts_listed_and_its_section_only_in_mode_native(
    tmp_path: Path, bank: Bank
) -> None:
    with pytest.raises(ConfigError, match=r"\$\.connectors\.bank\.accounts: mode native"):
        _connector(tmp_path, bank, mode="native")
    with pytest.raises(ConfigError, match=r"\$\.connectors\.bank\.native: only read"):
        _connector(tmp_path, bank, mode="hold", native={"tres": "cpu"})


def test_native_limit_is_usage_plus_running_plus_what_the_balance_pays() -> None:
    native = NativeSettings(qos="bank_{account}", tres="cpu", su_per_hour=Decimal(60))
    assert native.qos_of("Lab") == "bank_lab" and native.minutes(Decimal("2.99")) == 2
    usage = QosUsage("bank_lab", {"cpu": 30}, {"cpu": 5}, {"cpu": 4})
    assoc = AccountQos("lab", frozenset({"bank_lab"}), "bank_lab", ("alice",))
    limit = Limit.of("lab", "bank_lab", native, Decimal("3.00"), Decimal("-1.00"), usage, assoc)
    assert (limit.minutes, limit.current, limit.needs_write) == (11, 30, True)
    action = limit.action()
    assert action.kind == "limit" and action.payload["set"] and not action.payload["create"]
    assert "GrpTRESMins 30 -> cpu=11" in action.reason
    # within the slack of rounded-down usage: left alone
    same = Limit.of("lab", "bank_lab", native, Decimal("23.00"), Decimal(0), usage, assoc)
    assert (same.minutes, same.needs_write) == (32, False)
    # unlimited clears the limit; a missing QOS is created and attached
    free = Limit.of("lab", "bank_lab", native, None, Decimal(0), None, AccountQos("lab"))
    assert free.minutes is None and free.needs_write
    assert free.action().payload | {"users": []} == {
        "account": "lab", "qos": "bank_lab", "tres": "cpu", "minutes": None, "create": True,
        "set": False, "attach": True, "users": []}


def test_unsettled_is_what_the_service_has_not_been_told_yet() -> None:
    prices = Prices({"main": "60"}, "refuse")
    started = _running(1, minutes=3)  # estimate 3.00, not reported
    reported = _running(2, minutes=3)
    ended = Job(**{**reported.__dict__, "state": JobState.COMPLETED, "end_time": NOW,
                   "source": "sacct"})  # 90 s: 1.50 of a 3.00 estimate
    silent = Job(**{**_running(3).__dict__, "state": JobState.FAILED, "end_time": NOW - 30,
                    "source": "sacct"})  # 60 s: 1.00, never reported at all
    snapshot = Snapshot(delivered={"start": frozenset({delivery_key(reported)})})
    view = View(now=NOW, active=(started, reported), ended=(ended, silent),
                squeue_ok=True, sacct_ok=True)
    assert unsettled_su(view, snapshot, prices) == {"lab": Decimal("-3.00") + Decimal("1.50")
                                                    - Decimal("1.00")}


def test_native_writes_the_balance_into_slurm_and_leaves_it_alone_when_unsure(
    tmp_path: Path, bank: Bank, caplog: pytest.LogCaptureFixture
) -> None:
    connector, qos = _native(tmp_path, bank)
    slurm = Slurm()
    store = Store.memory()
    _cycle(connector, store, slurm)
    assert qos.writes == [("create", "bank_lab", "cpu=3"), ("attach", "bank_lab", "lab")]
    first_asks = bank.count("GET", "/can_submit_job/.*")
    # nothing changed: two questions per user, no write
    _cycle(connector, store, slurm, NOW + 60)
    assert len(qos.writes) == 2
    assert bank.count("GET", "/can_submit_job/.*") - first_asks == 4
    # a job starts (2 cpu-minutes held by Slurm); its estimate is charged in the same cycle:
    # the balance falls by what Slurm already counts, so the limit stays
    slurm.active = [_running(7, minutes=2)]
    qos.qos["bank_lab"] = QosUsage("bank_lab", {"cpu": 3}, {"cpu": 0}, {"cpu": 2})
    _cycle(connector, store, slurm, NOW + 120)
    assert bank.usage("lab") == Decimal("2.00") and len(qos.writes) == 2
    _cycle(connector, store, slurm, NOW + 180)
    assert len(qos.writes) == 2
    # funds raised: the limit follows
    bank.set_allocation("lab", "10.00")
    bank.set_user_allocation("lab", "alice", "10.00")
    _cycle(connector, store, slurm, NOW + 240)
    assert qos.writes[-1] == ("set", "bank_lab", "cpu=10")
    # the service down, or Slurm unreadable: the limit is left as it is, and that is logged
    bank.set_allocation("lab", "1.00")
    bank.down = True
    _cycle(connector, store, slurm, NOW + 300)
    bank.down = False
    qos.broken = True
    _cycle(connector, store, slurm, NOW + 360)
    assert qos.writes[-1] == ("set", "bank_lab", "cpu=10")
    said = caplog.text
    assert "balance of account lab unknown, its QOS limit left as it is" in said
    assert "QOS limits left as they are" in said and "slurmctld down" in said
    qos.broken = False
    _cycle(connector, store, slurm, NOW + 420)
    assert qos.writes[-1] == ("set", "bank_lab", "cpu=2")  # 0 used + 2 running + 0 left


def test_check_names_what_slurm_lacks_for_mode_native(tmp_path: Path, bank: Bank) -> None:
    connector, qos = _native(tmp_path, bank)
    assert connector.check() == []
    qos.enforcement = lambda: Enforcement(  # type: ignore[method-assign]
        frozenset({"associations", "limits"}), "priority/basic", "c")
    problems = connector.check()
    assert any("has no safe" in p for p in problems)
    assert any("PriorityType is priority/basic" in p for p in problems)
    assert all(p.startswith("mode native: ") for p in problems)
