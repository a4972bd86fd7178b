"""The outside service of a chaos run: which emulator, the connector's settings, and what is
left in the service at the end.

- ``clustercockpit``: the cc-backend emulator (1.4.4 or 1.5.4, 1.5 with its job_cache committed
  every 5 s); the connector with default settings but url, token and cluster (and
  ``api_version: "1.4"`` against 1.4, which the default 1.5 would not speak).
- ``bank``: the myBRC emulator, every account with a large allocation and every user a member;
  the connector in its default mode (report) with a price per partition.
"""

from __future__ import annotations

import pwd
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.chaos.timeline import ACCOUNTS, Scenario
from tests.emulators.bank import Bank
from tests.emulators.base import Emulator
from tests.emulators.ccbackend import CCBackend

__all__ = ["BANK_PRICES", "CC_CLUSTER", "SERVICES", "TOKEN", "Service", "bank_users"]

CC_CLUSTER = "chaos"
TOKEN = "chaos-token"
BANK_PRICES = {"main": "100", "gpu": "300"}  # SU per CPU-hour: seconds-long jobs cost cents
BANK_ALLOCATION = "90000000"


def bank_users(count: int = 12) -> list[str]:
    """Users that exist on this machine: the Bank connector finds an ended job's uid by name
    (sacct's JSON has none), as it would on a cluster."""
    names = sorted({p.pw_name for p in pwd.getpwall() if p.pw_uid < 65534
                    and p.pw_name.isidentifier()}, key=lambda n: pwd.getpwnam(n).pw_uid)
    return names[:count]


class Service:
    """One kind of outside service (see the module docstring)."""

    name = ""

    def make(self, scenario: Scenario, users: Sequence[str]) -> Emulator:
        raise NotImplementedError

    def settings(self, url: str, token_file: Path, scenario: Scenario) -> dict[str, Any]:
        raise NotImplementedError

    def snapshot(self, emu: Any) -> tuple[Any, ...]:
        """What changes when the connector delivers something."""
        raise NotImplementedError

    def records(self, emu: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def usage(self, emu: Any, users: Sequence[str]) -> dict[str, str]:
        return {}

    def api_version(self, scenario: Scenario) -> str:
        return ""


class ClusterCockpit(Service):
    name = "clustercockpit"

    def make(self, scenario: Scenario, users: Sequence[str]) -> Emulator:
        flavour14 = scenario.cc_version.startswith("1.4")
        return CCBackend(scenario.cc_version,
                         clusters={CC_CLUSTER: {"subclusters": {"main": "*",
                                                                "gpu": "g[01-16]"}}},
                         tokens={TOKEN}, commit_interval=None if flavour14 else 5.0)

    def settings(self, url: str, token_file: Path, scenario: Scenario) -> dict[str, Any]:
        cc: dict[str, Any] = {"url": url, "token": {"file": str(token_file)},
                              "cluster": CC_CLUSTER}
        if scenario.cc_version.startswith("1.4"):
            cc["api_version"] = "1.4"
        return cc

    def snapshot(self, emu: Any) -> tuple[Any, ...]:
        return tuple(sorted((r["jobId"], r["startTime"], r["jobState"])
                            for r in emu.all_jobs()))

    def records(self, emu: Any) -> list[dict[str, Any]]:
        return list(emu.all_jobs())

    def api_version(self, scenario: Scenario) -> str:
        return "1.4" if scenario.cc_version.startswith("1.4") else "1.5"


class BankService(Service):
    name = "bank"

    def make(self, scenario: Scenario, users: Sequence[str]) -> Emulator:
        bank = Bank(token=TOKEN)
        for user in users:
            bank.add_user(user, pwd.getpwnam(user).pw_uid)
        for account in ACCOUNTS:
            bank.set_allocation(account, BANK_ALLOCATION)
            for user in users:
                bank.set_user_allocation(account, pwd.getpwnam(user).pw_uid, BANK_ALLOCATION)
        return bank

    def settings(self, url: str, token_file: Path, scenario: Scenario) -> dict[str, Any]:
        return {"url": url, "token": {"file": str(token_file)}, "prices": dict(BANK_PRICES),
                "unpriced": "refuse"}

    def snapshot(self, emu: Any) -> tuple[Any, ...]:
        return tuple((j, r["amount"], r["enddate"]) for j in emu.job_ids()
                     if (r := emu.job(j)) is not None)

    def records(self, emu: Any) -> list[dict[str, Any]]:
        return [r for j in emu.job_ids() if (r := emu.job(j)) is not None]

    def usage(self, emu: Any, users: Sequence[str]) -> dict[str, str]:
        out = {}
        for account in ACCOUNTS:
            out[account] = str(emu.usage(account))
            for user in users:
                out[f"{account}/{user}"] = str(emu.user_usage(account, pwd.getpwnam(user).pw_uid))
        return out


SERVICES: dict[str, Service] = {s.name: s for s in (ClusterCockpit(), BankService())}


def price(partition: str) -> Decimal:
    return Decimal(BANK_PRICES[partition])
