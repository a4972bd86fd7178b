"""The myBRC client behind the Bank connector's service interface, against the emulator over
loopback HTTP: answers, refusals, and a balance found by bisecting can_submit_job."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from slurm_sync.connectors.bank.service import Answer, MybrcService, Unanswered
from slurm_sync.http import ServiceClient
from tests.emulators.bank import Bank


@pytest.fixture
def bank() -> Iterator[Bank]:
    with Bank(token="t") as emu:
        emu.add_user("alice", 5001)
        emu.add_user("bob", 5002)
        emu.set_allocation("lab", "100.00")
        emu.set_user_allocation("lab", "alice", "100.00")
        emu.set_user_allocation("lab", "bob", "7.25")
        yield emu  # type: ignore[misc]


def _service(emu: Bank, token: str = "t") -> MybrcService:
    return MybrcService(ServiceClient(emu.url, headers={"Authorization": f"Token {token}"},
                                      timeout=2, retries=0))


def _asks(emu: Bank) -> int:
    return emu.count("GET", "/can_submit_job/.*")


def test_can_pay_says_yes_no_refused_or_no_answer(bank: Bank) -> None:
    service = _service(bank)
    assert service.can_pay(Decimal("7.25"), 5002, "lab").ok is True
    no = service.can_pay(Decimal("7.26"), 5002, "lab")
    assert no.ok is False and "user allocation 7.25" in no.message and not no.refused
    unknown = service.can_pay(Decimal("1.00"), 5002, "nosuch")
    assert unknown == Answer(False, unknown.message, refused=True)
    assert "nosuch" in unknown.message
    bank.down = True
    assert service.can_pay(Decimal("1.00"), 5002, "lab").ok is None
    assert _service(bank, "wrong").can_pay(Decimal(1), 5001, "lab").ok is None


def test_balance_is_found_to_the_cent_and_an_unchanged_one_costs_two_requests(
    bank: Bank,
) -> None:
    service = _service(bank)
    bank.set_usage("lab", "12.34")
    assert service.balance("lab", 5001) == Decimal("87.66")
    # the user's own cap is the lower one for bob
    assert service.balance("lab", 5002) == Decimal("7.25")
    before = _asks(bank)
    assert service.balance("lab", 5001, hint=Decimal("87.66")) == Decimal("87.66")
    assert _asks(bank) - before == 2
    # usage moved both ways since the hint
    bank.set_usage("lab", "50.00")
    assert service.balance("lab", 5001, hint=Decimal("87.66")) == Decimal("50.00")
    bank.set_usage("lab", "0.00")
    assert service.balance("lab", 5001, hint=Decimal("50.00")) == Decimal("100.00")
    bank.set_usage("lab", "100.00")
    assert service.balance("lab", 5001, hint=Decimal("100.00")) == Decimal("0.00")
    bank.set_usage("lab", "130.00")  # overdrawn: nothing more can be spent
    assert service.balance("lab", 5001) == Decimal("0.00")


def test_balance_of_an_infinite_allocation_is_unlimited_and_an_outage_raises(
    bank: Bank,
) -> None:
    service = _service(bank)
    bank.set_allocation("lab", "Infinity")
    assert service.balance("lab", 5001) is None
    bank.set_allocation("lab", "5.00")
    bank.down = True
    with pytest.raises(Unanswered, match="503"):
        service.balance("lab", 5001, hint=Decimal("5.00"))


def test_balance_to_a_coarser_resolution_is_never_above_the_real_one(bank: Bank) -> None:
    service = _service(bank)
    bank.set_usage("lab", "12.34")  # 87.66 left
    assert service.balance("lab", 5001, resolution=Decimal(1)) == Decimal("87.00")
    # a hint a little off (a limit in whole minutes) costs a few requests, not a full search
    before = _asks(bank)
    assert service.balance("lab", 5001, hint=Decimal("85.40"),
                           resolution=Decimal(1)) == Decimal("87.00")
    assert _asks(bank) - before <= 6
    before = _asks(bank)
    assert service.balance("lab", 5001, hint=Decimal("87.00"),
                           resolution=Decimal(1)) == Decimal("87.00")
    assert _asks(bank) - before == 2
