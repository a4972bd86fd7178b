"""The Bank's plan, called with values only: a View, a Snapshot, the settings and an Observed
value (what observe read). No emulator, no NSS, no Slurm; and observe's reads, against a
service and NSS that count what they are asked."""

from __future__ import annotations

import pwd
from collections.abc import Mapping
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from slurm_sync.actions import Action
from slurm_sync.connector import Direction, Fact, Plan, Scope, Snapshot, View, delivery_key
from slurm_sync.connectors.bank import BankConnector, Observed, plan
from slurm_sync.connectors.bank.model import AccountBalance, Check, check_key
from slurm_sync.connectors.bank.observe import look_up_uids, observe
from slurm_sync.connectors.bank.qos import AccountQos, QosUsage
from slurm_sync.connectors.bank.service import Answer
from slurm_sync.connectors.bank.settings import SCHEMA, BankSettings, defaults
from slurm_sync.errors import ConfigError
from slurm_sync.slurm.model import Job, JobState

NOW = 1_795_600_000
BOTH = Direction.BOTH


def _settings(**extra: Any) -> BankSettings:
    return BankSettings.from_mapping({
        "url": "https://bank.example.org", "token": {"env": "BANK_TOKEN"},
        "prices": {"main": "60"}, "unpriced": "refuse", "mode": "hold", **extra})


def _view(active: tuple[Job, ...] = (), ended: tuple[Job, ...] = ()) -> View:
    return View(now=NOW, active=active, ended=ended, squeue_ok=True, sacct_ok=True)


def _pending(job_id: int, user: str = "alice", minutes: int = 1, submit: int = NOW - 30,
             uid: int | None = 5001) -> Job:
    return Job(job_id=job_id, state=JobState.PENDING, user=user, uid=uid, account="lab",
               partition="main", time_limit=minutes, cpus=1, submit_time=submit, cluster="c")


def _running(job_id: int, minutes: int = 2, uid: int | None = 5001) -> Job:
    return Job(job_id=job_id, state=JobState.RUNNING, user="alice", uid=uid, account="lab",
               partition="main", time_limit=minutes, cpus=1, submit_time=NOW - 100,
               start_time=NOW - 90, hosts=("n1",), cluster="c", node_count=1)


def _ended(job_id: int, start: int, end: int, state: JobState = JobState.COMPLETED,
           restarts: int = 0) -> Job:
    """A run as sacct shows it: no uid."""
    return Job(job_id=job_id, state=state, user="alice", account="lab", partition="main",
               cpus=1, submit_time=NOW - 400, start_time=start, end_time=end, hosts=("n1",),
               cluster="c", node_count=1, source="sacct", restart_count=restarts)


def _delivered(**kinds: Any) -> Snapshot:
    return Snapshot(delivered={k: frozenset(v) for k, v in kinds.items()})


def _kinds(result: Plan) -> list[tuple[str, str]]:
    return [(a.kind, a.key) for a in result.actions]


# --- pending jobs: approve, hold, release, deny --------------------------------------------------

def test_a_job_that_can_pay_is_approved_as_a_fact_and_one_that_cannot_is_held() -> None:
    one, two = _pending(1, minutes=2), _pending(2, "bob", minutes=2, uid=5002)
    observed = Observed(checks={
        check_key(one): Check(Decimal("2.00"), Answer(True, "ok")),
        check_key(two): Check(Decimal("4.00"), Answer(False, "Adding job_cost 4.00 ...")),
    })
    result = plan(_settings(), _view((one, two)), Snapshot(), BOTH, Scope(), observed)
    assert result.facts == (Fact("approve", check_key(one), "2.00 SU approved"),)
    assert _kinds(result) == [("hold", check_key(two))]
    hold = result.actions[0]
    assert hold.payload == {"job_id": 2, "comment": (
        "slurm-sync bank: account lab cannot pay 2.00 SU (with 2.00 SU pending): "
        "Adding job_cost 4.00 ...")}


def test_a_job_the_bank_held_is_released_once_it_can_pay() -> None:
    job = _pending(3)
    key = check_key(job)
    observed = Observed(checks={key: Check(Decimal("1.00"), Answer(True))})
    held = _delivered(hold={key}, approve=set())
    result = plan(_settings(), _view((job,)), held, BOTH, Scope(), observed)
    assert [f.kind for f in result.facts] == ["approve"]
    assert _kinds(result) == [("release", key)]
    # still unable to pay: already held, nothing more
    observed = Observed(checks={key: Check(Decimal("1.00"), Answer(False))})
    assert plan(_settings(), _view((job,)), held, BOTH, Scope(), observed) == Plan()


@pytest.mark.parametrize(("on_unreachable", "approved"), [("fail_open", True),
                                                          ("fail_closed", False)])
def test_no_answer_is_fail_open_or_fail_closed(on_unreachable: str, approved: bool) -> None:
    job = _pending(5)
    observed = Observed(checks={check_key(job): Check(Decimal("1.00"), Answer(None, "503"))})
    result = plan(_settings(on_unreachable=on_unreachable), _view((job,)), Snapshot(), BOTH,
                  Scope(), observed)
    if approved:
        assert [(f.kind, f.detail) for f in result.facts] == [
            ("approve", "service unreachable, approved (fail_open): 503")]
        assert result.actions == ()
    else:
        assert result.facts == () and _kinds(result) == [("hold", check_key(job))]
        assert "refused (fail_closed): 503" in result.actions[0].payload["comment"]


def test_a_refused_request_an_unpriced_partition_or_no_uid_are_not_approved() -> None:
    refused = _pending(6)
    unpriced = Job(**{**_pending(7).__dict__, "partition": "gpu"})
    nobody = _pending(8, user="ghost", uid=None)
    observed = Observed(uids={"ghost": None}, checks={
        check_key(refused): Check(Decimal("1.00"), Answer(False, "bad uid", refused=True)),
        check_key(unpriced): Check(), check_key(nobody): Check()})
    result = plan(_settings(on_unreachable="fail_closed"), _view((refused, unpriced, nobody)),
                  Snapshot(), BOTH, Scope(), observed)
    reasons = [a.reason for a in result.actions]
    assert reasons == ["the service refuses the request: bad uid",
                       "partition gpu has no price",
                       "service unreachable, refused (fail_closed): no uid for user ghost"]


def test_a_free_job_is_approved_without_a_question() -> None:
    settings = BankSettings.from_mapping({
        "url": "https://b", "token": {"env": "T"}, "prices": {"main": "0"}, "unpriced": "free",
        "mode": "hold"})
    job = _pending(9)
    result = plan(settings, _view((job,)), Snapshot(), BOTH, Scope(),
                  Observed(checks={check_key(job): Check()}))
    assert [(f.kind, f.detail) for f in result.facts] == [("approve", "costs nothing")]


def test_mode_report_touches_no_job_and_says_deny_once_per_submission() -> None:
    job = _pending(10, minutes=10)
    key = check_key(job)
    observed = Observed(checks={key: Check(Decimal("10.00"), Answer(False, "no funds"))})
    settings = _settings(mode="report")
    result = plan(settings, _view((job,)), Snapshot(), BOTH, Scope(), observed)
    assert result.actions == ()
    assert result.facts == (Fact("deny", key, "would hold (mode report): account lab cannot "
                                              "pay 10.00 SU: no funds"),)
    assert plan(settings, _view((job,)), _delivered(deny={key}), BOTH, Scope(),
                observed) == Plan()


def test_only_jobs_observe_asked_about_and_in_scope_are_judged() -> None:
    asked, other = _pending(11), _pending(12)
    observed = Observed(checks={check_key(asked): Check(Decimal("1.00"), Answer(False))})
    result = plan(_settings(), _view((asked, other)), Snapshot(), BOTH, Scope(), observed)
    assert _kinds(result) == [("hold", check_key(asked))]
    assert plan(_settings(), _view((asked, other)), Snapshot(), BOTH, Scope(job_ids=(12,)),
                observed) == Plan()
    assert plan(_settings(), _view((asked,)), Snapshot(), Direction.STOP, Scope(),
                observed) == Plan()


# --- starts and ends -----------------------------------------------------------------------------

def test_a_started_run_is_reported_with_its_estimate() -> None:
    run = _running(20, minutes=3)
    result = plan(_settings(), _view((run,)), Snapshot(), BOTH, Scope(), Observed())
    assert _kinds(result) == [("start", delivery_key(run))]
    record = result.actions[0].payload["record"]
    assert (record["amount"], record["userid"], record["jobstatus"]) == ("3.00", "5001",
                                                                        "RUNNING")
    assert plan(_settings(), _view((run,)), _delivered(start={delivery_key(run)}), BOTH,
                Scope(), Observed()) == Plan()


def test_an_ended_run_takes_its_owners_uid_from_observe_or_is_refused_as_a_fact() -> None:
    run = _ended(21, NOW - 90, NOW)
    key = delivery_key(run)
    done = _delivered(start={key})
    result = plan(_settings(), _view(ended=(run,)), done, BOTH, Scope(),
                  Observed(uids={"alice": 5001}))
    assert _kinds(result) == [("stop", key)]
    record = result.actions[0].payload["record"]
    assert (record["amount"], record["userid"], record["jobstatus"]) == ("1.50", "5001",
                                                                        "COMPLETED")
    result = plan(_settings(), _view(ended=(run,)), done, BOTH, Scope(),
                  Observed(uids={"alice": None}))
    assert result.actions == ()
    assert result.facts == (Fact("stop", key, "not reported: no uid for user alice",
                                 refused=True),)
    # the start too, when it was never reported
    result = plan(_settings(), _view(ended=(run,)), Snapshot(), Direction.START, Scope(),
                  Observed(uids={"alice": None}))
    assert result.facts == (Fact("start", key, "not reported: no uid for user alice",
                                 refused=True),)


def test_only_the_managed_accounts_are_charged() -> None:
    run = _running(22)
    assert plan(_settings(accounts=["other"]), _view((run,)), Snapshot(), BOTH, Scope(),
                Observed()) == Plan()


def test_a_requeued_jobs_runs_end_oldest_first_one_per_cycle_the_later_added_to_the_earlier(
) -> None:
    first = _ended(30, NOW - 300, NOW - 240, JobState.REQUEUED)
    second = _ended(30, NOW - 200, NOW - 80, restarts=1)
    view = _view(ended=(second, first))
    observed = Observed(uids={"alice": 5001})
    starts = {delivery_key(first), delivery_key(second)}
    result = plan(_settings(), view, _delivered(start=starts), Direction.STOP, Scope(),
                  observed)
    assert _kinds(result) == [("stop", delivery_key(first))]
    assert "adds_to_earlier_runs" not in result.actions[0].payload
    after = _delivered(start=starts, stop={delivery_key(first)})
    result = plan(_settings(), view, after, Direction.STOP, Scope(), observed)
    assert _kinds(result) == [("stop", delivery_key(second))]
    action = result.actions[0]
    assert action.payload["adds_to_earlier_runs"] is True
    assert action.payload["record"]["amount"] == "2.00"
    assert action.reason == "ended completed; 2.00 SU added to the job's earlier runs"
    # the earlier run's end waiting in the outbox holds the later one back
    queued = Snapshot(delivered={"start": frozenset(starts)},
                      queued={"stop": frozenset({delivery_key(first)})})
    assert plan(_settings(), view, queued, Direction.STOP, Scope(), observed) == Plan()


# --- mode native ---------------------------------------------------------------------------------

def _native(**extra: Any) -> BankSettings:
    return _settings(mode="native", accounts=["lab"],
                     native={"tres": "cpu", "su_per_tres_hour": "60"}, **extra)


def test_native_writes_a_limit_from_the_balance_slurms_usage_and_what_is_unsettled() -> None:
    assoc = AccountQos("lab", frozenset({"bank_lab"}), "bank_lab", ("alice",))
    usage = QosUsage("bank_lab", {"cpu": 30}, {"cpu": 5}, {"cpu": 4})
    observed = Observed(accounts=(AccountBalance("lab", "bank_lab", assoc, usage,
                                                 Decimal("3.00")),))
    result = plan(_native(), _view(), Snapshot(), BOTH, Scope(), observed)
    assert [(a.kind, a.payload["minutes"]) for a in result.actions] == [("limit", 12)]
    # a run started and not reported yet: its estimate (1.00) comes off, as the service will
    result = plan(_native(), _view((_running(40, minutes=1),)), _delivered(), Direction.START,
                  Scope(), observed)
    assert [(a.kind, a.payload.get("minutes")) for a in result.actions] == [
        ("limit", 11), ("start", None)]
    # within the slack, unknown accounts, --jobid runs: no write
    usage_now = QosUsage("bank_lab", {"cpu": 13}, {"cpu": 5}, {"cpu": 4})
    same = Observed(accounts=(AccountBalance("lab", "bank_lab", assoc, usage_now,
                                             Decimal("3.00")),))
    assert plan(_native(), _view(), Snapshot(), BOTH, Scope(), same) == Plan()
    assert plan(_native(), _view(), Snapshot(), BOTH, Scope(), Observed()) == Plan()
    assert plan(_native(), _view(), Snapshot(), BOTH, Scope(job_ids=(1,)), observed) == Plan()


# --- the whole: pure, declared -------------------------------------------------------------------

def test_plan_reads_nothing_but_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_nss(name: str) -> Any:
        raise AssertionError(f"plan looked {name} up")
    monkeypatch.setattr(pwd, "getpwnam", no_nss)
    job, run = _pending(50), _ended(51, NOW - 90, NOW)
    args = (_settings(), _view((job,), (run,)), Snapshot(), BOTH, Scope(),
            Observed(uids={"alice": 5001},
                     checks={check_key(job): Check(Decimal("1.00"), Answer(False))}))
    first = plan(*args)
    assert first == plan(*args) and len(first.actions) == 3  # hold, start, stop


def test_every_kind_plan_uses_is_declared_on_the_side_it_acts() -> None:
    table = BankConnector.kind_table()
    assert {k: (v.side, v.destructive, v.batched) for k, v in table.items()} == {
        "approve": (Direction.START, False, False),
        "release": (Direction.START, False, True),
        "limit": (Direction.START, False, True),
        "start": (Direction.START, False, False),
        "hold": (Direction.STOP, True, True),
        "stop": (Direction.STOP, True, False),
        "deny": (Direction.START, False, False),
    }
    job = _pending(60)
    for mode in ("hold", "report"):
        for answer in (Answer(True), Answer(False)):
            result = plan(_settings(mode=mode), _view((job,), (_ended(61, NOW - 9, NOW),)),
                          Snapshot(), BOTH, Scope(),
                          Observed(uids={"alice": None},
                                   checks={check_key(job): Check(Decimal("1"), answer)}))
            for item in (*result.actions, *result.facts):
                assert item.kind in table


# --- observe: what it asks, once -----------------------------------------------------------------

class CountingService:
    """can_pay answers from a budget per account, and records each question."""

    def __init__(self, budget: Mapping[str, str]) -> None:
        self.budget = {k: Decimal(v) for k, v in budget.items()}
        self.asked: list[tuple[Decimal, int, str]] = []

    def can_pay(self, amount: Decimal, uid: int, account: str) -> Answer:
        self.asked.append((amount, uid, account))
        return Answer(amount <= self.budget.get(account, Decimal(0)))


def test_observe_asks_each_pending_job_counting_the_ones_approved_before_it() -> None:
    one, two, three = (_pending(70, minutes=2, submit=NOW - 30),
                       _pending(71, minutes=2, submit=NOW - 20),
                       _pending(72, minutes=1, submit=NOW - 10))
    service = CountingService({"lab": "3.00"})
    observed = observe(_settings(), _view((three, two, one)), Snapshot(), service,  # type: ignore[arg-type]
                       None)
    # 70 fits (2.00); 71 would make 4.00 with it; 72 makes 3.00 with 70
    assert [a for a, _, _ in service.asked] == [Decimal("2.00"), Decimal("4.00"),
                                                Decimal("3.00")]
    assert observed.checks[check_key(two)] == Check(Decimal("4.00"), Answer(False))
    # an approved job is not asked again, and counts for the others
    service.asked.clear()
    observe(_settings(), _view((one, two)), _delivered(approve={check_key(one)}), service,  # type: ignore[arg-type]
            None)
    assert [a for a, _, _ in service.asked] == [Decimal("4.00")]


def test_observe_looks_each_user_up_once_per_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    looked: list[str] = []

    def getpwnam(name: str) -> Any:
        looked.append(name)
        if name != "alice":
            raise KeyError(name)
        return SimpleNamespace(pw_uid=5001)
    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    runs = tuple(_ended(80 + i, NOW - 90, NOW) for i in range(5))
    ghost = Job(**{**_ended(90, NOW - 90, NOW).__dict__, "user": "ghost"})
    done = _ended(91, NOW - 90, NOW)
    snapshot = _delivered(start={delivery_key(done)}, stop={delivery_key(done)})
    observed = observe(_settings(), _view(ended=(*runs, ghost, done)), snapshot,
                       CountingService({}), None)  # type: ignore[arg-type]
    assert sorted(looked) == ["alice", "ghost"] and observed.uids == {"alice": 5001,
                                                                      "ghost": None}
    assert look_up_uids(["alice", "alice"]) == {"alice": 5001}


# --- settings ------------------------------------------------------------------------------------

def _schema_defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, spec in schema.get("properties", {}).items():
        if "default" in spec:
            out[key] = spec["default"]
        if "properties" in spec:
            out[key] = _schema_defaults(spec)
    return out


def test_the_schemas_defaults_are_the_settings_defaults() -> None:
    assert _schema_defaults(SCHEMA) == defaults()
    parsed = _settings(mode="report")
    assert (parsed.api, parsed.mode, parsed.on_unreachable, sorted(parsed.accounts),
            parsed.timeout) == tuple(defaults()[k] for k in (
                "api", "mode", "on_unreachable", "accounts", "timeout"))
    native = _settings(mode="native", accounts=["lab"]).native
    assert {"qos": native.qos, "tres": native.tres,
            "su_per_tres_hour": str(native.su_per_hour)} == defaults()["native"]


def test_settings_that_the_schema_cannot_refuse_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"\$\.connectors\.bank\.accounts: mode native"):
        _settings(mode="native")
    with pytest.raises(ConfigError, match=r"\$\.connectors\.bank\.native: only read"):
        _settings(native={"tres": "cpu"})
    with pytest.raises(ConfigError, match=r"native\.su_per_tres_hour: must be above 0"):
        _settings(mode="native", accounts=["lab"], native={"su_per_tres_hour": "0"})
    with pytest.raises(ConfigError, match=r"prices\.main: negative price"):
        BankSettings.from_mapping({"url": "https://b", "token": {"env": "T"},
                                   "prices": {"main": "-1"}, "unpriced": "free"})


def test_an_unused_action_of_another_kind_is_refused_by_apply() -> None:
    from slurm_sync.connectors.bank.apply import apply_one
    outcome = apply_one(CountingService({}), Action("bank", "approve", "k", {}))  # type: ignore[arg-type]
    assert outcome.status.value == "permanent"


def test_the_docs_name_the_settings_defaults() -> None:
    """docs/bank.md's settings table says each default as BankSettings has it."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "bank.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| `")}

    def shown(value: Any) -> str:
        return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"

    found = defaults()
    native = found.pop("native")
    assert "Default: all" in rows["`accounts`"] and found.pop("accounts") == []
    for key, value in found.items():
        assert shown(value) in rows[f"`{key}`"], (key, value)
    for key, value in native.items():
        assert f"`{key}`" in rows["`native`"] and f"default {shown(value)}" in rows["`native`"]
