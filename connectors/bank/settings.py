"""The Bank connector's settings (``connectors.bank`` in config.json), parsed once into frozen
values. Every default is a field default of ``BankSettings`` or ``NativeSettings``, and only
there: the JSON Schema's ``default`` words are made from them.

    >>> settings = BankSettings.from_mapping({
    ...     "url": "https://mybrc.example.org", "token": {"file": "/etc/slurm-sync/bank"},
    ...     "prices": {"main": "0.75"}, "unpriced": "refuse"})
    >>> settings.mode, settings.fail_open, settings.timeout
    ('report', True, 5.0)
    >>> settings.prices.of("main,other")  # other has no price, and unpriced is refuse
    >>> SCHEMA["properties"]["mode"]["default"]
    'report'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from slurm_sync.connectors.bank.service import SERVICES
from slurm_sync.errors import ConfigError
from slurm_sync.secrets import SECRET_REF_SCHEMA

__all__ = ["MODES", "SCHEMA", "BankSettings", "NativeSettings", "Prices", "defaults"]

MODES = ("report", "hold", "native")
_WHERE = "$.connectors.bank"


class Prices:
    """The price table (partition -> service units per CPU-hour) and what an unpriced
    partition means (``free`` or ``refuse``)."""

    def __init__(self, table: Mapping[str, Any], unpriced: str) -> None:
        parsed: dict[str, Decimal] = {}
        for name, value in table.items():
            try:
                price = Decimal(str(value))
            except InvalidOperation:
                raise ConfigError(f"{_WHERE}.prices.{name}: {value!r} is not a "
                                  f"number") from None
            if price < 0:
                raise ConfigError(f"{_WHERE}.prices.{name}: negative price")
            parsed[name] = price
        self.table: Mapping[str, Decimal] = MappingProxyType(parsed)
        self.unpriced = unpriced

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Prices):
            return NotImplemented
        return dict(self.table) == dict(other.table) and self.unpriced == other.unpriced

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.table.items())), self.unpriced))

    def __repr__(self) -> str:
        return f"Prices({dict(self.table)!r}, {self.unpriced!r})"

    def of(self, partitions: str | None) -> Decimal | None:
        """The price of a job that may run on ``partitions`` (``a,b``: the highest); None when
        one of them has no price and unpriced partitions are refused."""
        prices = []
        for name in (partitions or "").split(","):
            name = name.strip()
            if not name:
                continue
            if name in self.table:
                prices.append(self.table[name])
            elif self.unpriced == "refuse":
                return None
            else:
                prices.append(Decimal(0))
        return max(prices) if prices else (Decimal(0) if self.unpriced == "free" else None)


@dataclass(frozen=True)
class NativeSettings:
    """Mode native: the QOS name pattern, the TRES its limit is on, and what an hour of that
    TRES costs in service units (``su_per_tres_hour``)."""

    qos: str = "bank_{account}"
    tres: str = "billing"
    su_per_hour: Decimal = Decimal(1)

    def qos_of(self, account: str) -> str:
        """`NativeSettings().qos_of("Lab")` is ``bank_lab``."""
        return self.qos.replace("{account}", account).lower()

    @property
    def resolution(self) -> Decimal:
        """Service units of one TRES-minute: finer than that a limit in minutes cannot say."""
        return self.su_per_hour / 60

    def minutes(self, su: Decimal) -> int:
        """Whole TRES-minutes that ``su`` service units pay for (never more)."""
        return int((max(su, Decimal(0)) * 60 / self.su_per_hour).to_integral_value(ROUND_FLOOR))

    def su(self, minutes: int) -> Decimal:
        """What ``minutes`` TRES-minutes cost in service units (none below 0)."""
        return max(Decimal(minutes) * self.su_per_hour / 60, Decimal(0))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> NativeSettings:
        """The ``native`` section; a key it leaves out takes the field's default."""
        base = cls()
        found = cls(qos=str(raw.get("qos", base.qos)), tres=str(raw.get("tres", base.tres)),
                    su_per_hour=Decimal(str(raw.get("su_per_tres_hour", base.su_per_hour))))
        if found.su_per_hour <= 0:
            raise ConfigError(f"{_WHERE}.native.su_per_tres_hour: must be above 0")
        return found


@dataclass(frozen=True)
class BankSettings:
    """The settings of one Bank connector. ``url``, ``token``, ``prices`` and ``unpriced``
    are required; the rest default to the values here."""

    url: str
    token: Mapping[str, Any]  # a secret reference; the connector resolves it
    prices: Prices
    api: str = "mybrc"
    mode: str = "report"
    on_unreachable: str = "fail_open"
    accounts: frozenset[str] = frozenset()  # empty: every account
    timeout: float = 5.0
    native: NativeSettings = field(default_factory=NativeSettings)

    @property
    def fail_open(self) -> bool:
        """A job is approved when the service cannot answer (the plugins' behaviour)."""
        return self.on_unreachable == "fail_open"

    def manages(self, account: str | None) -> bool:
        """Whether the bank keeps ``account`` (``accounts``; all by default)."""
        return not self.accounts or (account or "") in self.accounts

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> BankSettings:
        """Settings as config.json has them (validated against ``SCHEMA``); a ConfigError
        names what the schema cannot say is wrong."""
        base = {f.name: _default_of(f) for f in dataclasses.fields(cls)
                if f.name not in _REQUIRED}
        native = raw.get("native")
        mode = str(raw.get("mode", base["mode"]))
        accounts = frozenset(str(a) for a in raw.get("accounts", base["accounts"]))
        if mode == "native" and not accounts:
            raise ConfigError(f"{_WHERE}.accounts: mode native changes the accounts' QOS in "
                              "Slurm, so it needs the list of accounts it may change")
        if native and mode != "native":
            raise ConfigError(f"{_WHERE}.native: only read in mode native")
        return cls(
            url=str(raw["url"]), token=MappingProxyType(dict(raw["token"])),
            prices=Prices(dict(raw["prices"]), str(raw["unpriced"])),
            api=str(raw.get("api", base["api"])), mode=mode,
            on_unreachable=str(raw.get("on_unreachable", base["on_unreachable"])),
            accounts=accounts, timeout=float(raw.get("timeout", base["timeout"])),
            native=NativeSettings.from_mapping(dict(native or {})))


_REQUIRED = ("url", "token", "prices", "unpriced")


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f.name)


def _json(value: Any) -> Any:
    """A default as config.json writes it."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, frozenset):
        return sorted(value)
    return value


def defaults() -> dict[str, Any]:
    """Every default, as config.json would write it: ``native`` keys under ``native``.

    >>> defaults()["native"]["su_per_tres_hour"]
    '1'
    """
    top = {f.name: _json(_default_of(f)) for f in dataclasses.fields(BankSettings)
           if f.name not in (*_REQUIRED, "native")}
    native = NativeSettings()
    top["native"] = {"qos": native.qos, "tres": native.tres,
                     "su_per_tres_hour": _json(native.su_per_hour)}
    return top


_DEFAULTS = defaults()

#: The JSON Schema of ``connectors.bank``; its ``default`` words come from the dataclasses.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": list(_REQUIRED),
    "properties": {
        "url": {"type": "string", "pattern": "^https?://"},
        "api": {"enum": sorted(SERVICES), "default": _DEFAULTS["api"],
                "description": "the service's API"},
        "token": SECRET_REF_SCHEMA,
        "prices": {
            "type": "object",
            "additionalProperties": {"type": ["string", "number"],
                                     "pattern": "^[0-9]+(\\.[0-9]+)?$", "minimum": 0},
            "description": "partition -> service units per CPU-hour",
        },
        "unpriced": {"enum": ["free", "refuse"],
                     "description": "what a partition without a price costs: nothing, or the "
                                    "job is refused (held in mode hold)"},
        "mode": {"enum": list(MODES), "default": _DEFAULTS["mode"]},
        "native": {
            "type": "object", "additionalProperties": False,
            "description": "mode native: each account's balance as GrpTRESMins on a NoDecay QOS",
            "properties": {
                "qos": {"type": "string", "pattern": "^[a-z0-9_.-]*\\{account\\}[a-z0-9_.-]*$",
                        "default": _DEFAULTS["native"]["qos"],
                        "description": "the QOS name, with {account}"},
                "tres": {"type": "string", "pattern": "^[a-z][a-z0-9_]*(/[a-z0-9_:]+)?$",
                         "default": _DEFAULTS["native"]["tres"],
                         "description": "the TRES the limit is on"},
                "su_per_tres_hour": {"type": ["string", "number"],
                                     "pattern": "^[0-9]+(\\.[0-9]+)?$", "exclusiveMinimum": 0,
                                     "default": _DEFAULTS["native"]["su_per_tres_hour"],
                                     "description": "service units one hour of that TRES "
                                                    "costs"},
            },
        },
        "accounts": {"type": "array", "items": {"type": "string", "minLength": 1},
                     "default": _DEFAULTS["accounts"],
                     "description": "the Slurm accounts the bank manages (empty: all)"},
        "on_unreachable": {"enum": ["fail_open", "fail_closed"],
                           "default": _DEFAULTS["on_unreachable"]},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 120,
                    "default": _DEFAULTS["timeout"],
                    "description": "seconds per request to the service"},
    },
}
