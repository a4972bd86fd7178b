"""Read and write the QOS limits that make Slurm itself enforce a balance (the Bank
connector's mode native; it serves nothing else).

    admin = QosAdmin(runner)
    admin.enforcement()                       # Enforcement(enforce={'limits', ...}, ...)
    admin.usage(["bank_lab"])                 # {'bank_lab': QosUsage(limit={'cpu': 180}, ...)}
    admin.accounts(["lab"])                   # {'lab': AccountQos(qos=..., users=(...))}
    admin.create("bank_lab", "cpu", 180)      # Flags=NoDecay GrpTRESMins=cpu=180
    admin.attach("bank_lab", "lab")           # the account's (and its users') default QOS
    admin.set_limit("bank_lab", "cpu", 240)   # None clears the limit

The pattern of slurm-sbalance and of ColdFront's reverse sync: a QOS per account with the
``NoDecay`` flag, so its usage never decays, and ``GrpTRESMins`` as the ceiling of that usage
(past, running and, with ``AccountingStorageEnforce=safe``, the time limits of jobs to come).
Slurm keeps a job whose time limit does not fit pending with reason ``QOSGrp<TRES>Minutes``
rather than starting it and killing it later.

What is read, with which command (one call each per cycle):

- ``scontrol show assoc_mgr flags=qos qos=A,B``: slurmctld's live view of each QOS:
  ``GrpTRESMins=cpu=LIMIT(USED)`` (``N`` is no limit; USED in minutes, including the part of
  running jobs already run) and ``GrpTRESRunMins=cpu=N(RUN)`` (the minutes running jobs still
  hold by their time limits). Only slurmctld knows USED and RUN; sacctmgr does not.
- ``sacctmgr show assoc``: each account's QOS list, default QOS and users.
- ``scontrol show config``: ``AccountingStorageEnforce`` and ``PriorityType``; a GrpTRESMins
  limit is only enforced with ``limits`` (or ``safe``) and, since the usage is kept by it,
  ``priority/multifactor``.

Every write is one ``sacctmgr -i`` call; nothing here deletes a QOS or an association.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from slurm_sync.errors import SlurmFormatError
from slurm_sync.slurm.run import Runner

__all__ = [
    "AccountQos",
    "Enforcement",
    "QosAdmin",
    "QosUsage",
    "parse_assoc_mgr_qos",
    "parse_config",
]

_NAME = re.compile(r"^[A-Za-z0-9_.-]+\Z")
_TRES_ITEM = re.compile(r"^(?P<name>[^=]+)=(?P<limit>N|-?\d+)\((?P<used>-?\d+)\)\Z")


@dataclass(frozen=True)
class QosUsage:
    """slurmctld's view of one QOS, in TRES-minutes: ``limit`` (GrpTRESMins; None: none),
    ``used`` (counted against it so far) and ``running`` (what running jobs still hold)."""

    name: str
    limit: Mapping[str, int | None] = field(default_factory=dict)
    used: Mapping[str, int] = field(default_factory=dict)
    running: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AccountQos:
    """An account's association: its QOS list, default QOS and the users under it."""

    account: str
    qos: frozenset[str] = frozenset()
    default_qos: str = ""
    users: tuple[str, ...] = ()
    #: users whose own association does not list the QOS the account defaults to
    users_without: tuple[str, ...] = ()


@dataclass(frozen=True)
class Enforcement:
    """What slurmctld enforces: ``AccountingStorageEnforce`` words and ``PriorityType``."""

    enforce: frozenset[str]
    priority_type: str
    cluster: str

    def problems(self) -> list[str]:
        """What keeps a GrpTRESMins limit from being enforced, in words an admin can act on."""
        out = []
        if not self.enforce & {"limits", "safe"}:
            out.append("AccountingStorageEnforce has neither limits nor safe: Slurm does not "
                       "enforce GrpTRESMins")
        elif "safe" not in self.enforce:
            out.append("AccountingStorageEnforce has no safe: a job may start that the balance "
                       "cannot finish, and Slurm kills it when the limit is reached")
        if "qos" not in self.enforce:
            out.append("AccountingStorageEnforce has no qos: jobs may run outside the "
                       "bank's QOS")
        if self.priority_type != "priority/multifactor":
            out.append(f"PriorityType is {self.priority_type or 'unset'}: QOS usage is only "
                       f"kept by priority/multifactor")
        return out


def parse_tres_minutes(text: str, where: str) -> tuple[dict[str, int | None], dict[str, int]]:
    """``cpu=180(12),mem=N(0)`` -> ({'cpu': 180, 'mem': None}, {'cpu': 12, 'mem': 0})."""
    limits: dict[str, int | None] = {}
    used: dict[str, int] = {}
    for item in text.split(","):
        if not item:
            continue
        match = _TRES_ITEM.match(item)
        if match is None:
            raise SlurmFormatError(where, item, "expected TRES=LIMIT(USED)",
                                   "scontrol show assoc_mgr")
        name = match["name"]
        limits[name] = None if match["limit"] in ("N", "-1") else int(match["limit"])
        used[name] = int(match["used"])
    return limits, used


def parse_assoc_mgr_qos(text: str) -> dict[str, QosUsage]:
    """The QOS records of ``scontrol show assoc_mgr flags=qos``, by QOS name."""
    records: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        for token in line.split():
            key, sep, value = token.partition("=")
            if not sep:
                continue
            if key == "QOS":
                name = value.split("(", 1)[0]
                current = records.setdefault(name, {})
            elif current is not None:
                current[key] = value
    out = {}
    for name, fields in records.items():
        where = f"assoc_mgr QOS={name}"
        limit, used = parse_tres_minutes(fields.get("GrpTRESMins", ""), f"{where} GrpTRESMins")
        _, running = parse_tres_minutes(fields.get("GrpTRESRunMins", ""),
                                        f"{where} GrpTRESRunMins")
        out[name] = QosUsage(name, limit, used, running)
    return out


def parse_config(text: str) -> Enforcement:
    """The lines of ``scontrol show config`` that decide whether a QOS limit holds."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    enforce = values.get("AccountingStorageEnforce", "")
    words = frozenset(w.strip().lower() for w in enforce.split(",")
                      if w.strip() and w.strip().lower() != "none")
    if "safe" in words:  # safe implies associations and limits
        words |= {"associations", "limits"}
    if words & {"limits", "qos"}:
        words |= {"associations"}
    return Enforcement(words, values.get("PriorityType", ""), values.get("ClusterName", ""))


def parse_assocs(text: str, accounts: Iterable[str]) -> dict[str, AccountQos]:
    """``sacctmgr -n -P show assoc format=account,user,qos,defaultqos`` by account."""
    rows: dict[str, list[tuple[str, frozenset[str], str]]] = {a: [] for a in accounts}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 4 or parts[0] not in rows:
            continue
        account, user, qos, default = parts[:4]
        rows[account].append((user, frozenset(q for q in qos.split(",") if q), default))
    out = {}
    for account, entries in rows.items():
        top = next(((q, d) for u, q, d in entries if not u), (frozenset(), ""))
        users = tuple(sorted(u for u, _, _ in entries if u))
        without = tuple(sorted(u for u, q, d in entries
                               if u and top[1] and (top[1] not in q or d != top[1])))
        out[account] = AccountQos(account, top[0], top[1], users, without)
    return out


class QosAdmin:
    """Reads and writes QOS limits through ``runner`` (scontrol, sacctmgr)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._cluster: str | None = None

    def enforcement(self) -> Enforcement:
        result = self.runner.run("scontrol", ["show", "config"])
        found = parse_config(result.stdout.decode("utf-8", errors="replace"))
        self._cluster = found.cluster or None
        return found

    def usage(self, names: Iterable[str]) -> dict[str, QosUsage]:
        """slurmctld's view of the QOS ``names`` that exist (a missing one is left out)."""
        wanted = sorted({_checked(n) for n in names})
        if not wanted:
            return {}
        result = self.runner.run("scontrol", ["show", "assoc_mgr", "flags=qos",
                                              f"qos={','.join(wanted)}"])
        found = parse_assoc_mgr_qos(result.stdout.decode("utf-8", errors="replace"))
        return {name: usage for name, usage in found.items() if name in wanted}

    def accounts(self, accounts: Iterable[str]) -> dict[str, AccountQos]:
        names = sorted({_checked(a) for a in accounts})
        args = ["-n", "-P", "show", "assoc", "where", f"account={','.join(names)}"]
        if self.cluster:
            args.append(f"cluster={self.cluster}")
        result = self.runner.run("sacctmgr", [*args, "format=account,user,qos,defaultqos"])
        return parse_assocs(result.stdout.decode("utf-8", errors="replace"), names)

    @property
    def cluster(self) -> str | None:
        if self._cluster is None:
            self.enforcement()
        return self._cluster

    def create(self, name: str, tres: str, minutes: int | None) -> None:
        """A new QOS with ``Flags=NoDecay`` and its GrpTRESMins."""
        self.runner.run("sacctmgr", ["-i", "add", "qos", _checked(name), "Flags=NoDecay",
                                     f"GrpTRESMins={_limit(tres, minutes)}"])

    def attach(self, name: str, account: str, users: Iterable[str] = ()) -> None:
        """Make ``name`` the default QOS of ``account`` and of ``users`` in it (added to their
        QOS lists; the others stay)."""
        where = [f"cluster={self.cluster}"] if self.cluster else []
        qos = _checked(name)
        self.runner.run("sacctmgr", ["-i", "modify", "account", "where",
                                     f"name={_checked(account)}", *where, "set",
                                     f"QOS+={qos}", f"DefaultQOS={qos}"])
        users = sorted(_checked(u) for u in users)
        if users:
            self.runner.run("sacctmgr", ["-i", "modify", "user", "where",
                                         f"name={','.join(users)}",
                                         f"account={_checked(account)}", *where, "set",
                                         f"QOS+={qos}", f"DefaultQOS={qos}"])

    def set_limit(self, name: str, tres: str, minutes: int | None) -> None:
        """``GrpTRESMins=tres=minutes`` on the QOS (None: no limit)."""
        self.runner.run("sacctmgr", ["-i", "modify", "qos", "where", f"name={_checked(name)}",
                                     "set", f"GrpTRESMins={_limit(tres, minutes)}"])


def _limit(tres: str, minutes: int | None) -> str:
    return f"{_checked(tres, slash=True)}={-1 if minutes is None else max(int(minutes), 0)}"


def _checked(name: str, slash: bool = False) -> str:
    """Names go into sacctmgr's argv as ``key=value``: no spaces, commas or ``=`` in them."""
    if not (_NAME.match(name) or (slash and re.match(r"^[A-Za-z0-9_./-]+\Z", name))):
        raise ValueError(f"{name!r} is not a name sacctmgr can take")
    return name
