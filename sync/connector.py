"""The contract every connector implements, and how connectors are found.

    >>> registry = discover()                        # entry points "slurm_sync.connectors"
    >>> events = registry["events"]                  # doctest: +SKIP
    >>> connector = events({"output": "-"})          # doctest: +SKIP
    >>> actions = connector.plan(view, snapshot, Direction.BOTH, Scope())  # doctest: +SKIP

A connector says what it needs from Slurm (``needs``), plans actions from one cycle's ``View`` and
what the store says was delivered (``plan``: pure, no I/O, no clock), and applies one action at a
time (``apply``: returns an ``Outcome``, never raises for one action). Built-in connectors and a
site's own are found the same way, through the entry-point group ``slurm_sync.connectors``, so a
site adds one with a pip package.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from importlib import metadata
from typing import Any, ClassVar

from slurm_sync.actions import Action, Outcome
from slurm_sync.errors import ConfigError
from slurm_sync.secrets import Secret, SecretRef, resolve_secret
from slurm_sync.slurm.model import Job
from slurm_sync.slurm.query import JobFilter, SacctWindow
from slurm_sync.slurm.reader import SlurmReader

__all__ = [
    "ENTRY_POINT_GROUP",
    "START_KIND",
    "STOP_KIND",
    "Connector",
    "Direction",
    "Fact",
    "Kind",
    "KindTable",
    "Plan",
    "Scope",
    "SlurmContext",
    "SlurmNeeds",
    "Snapshot",
    "View",
    "delivery_key",
    "discover",
]

ENTRY_POINT_GROUP = "slurm_sync.connectors"


class Direction(str, Enum):
    """Which half of the sync a run does: starting records, stopping them, or both."""

    START = "start"
    STOP = "stop"
    BOTH = "both"

    def includes(self, other: Direction) -> bool:
        """`Direction.BOTH.includes(Direction.STOP)` is true."""
        return self is Direction.BOTH or self is other


@dataclass(frozen=True)
class SlurmNeeds:
    """What a connector wants from Slurm each cycle; the engine merges every connector's needs
    into one ``squeue`` and one ``sacct`` call.

    ``detail``: ``"all"`` (the default) gives the connector every job of its ``squeue`` filter
    as squeue's full record (allocation, TRES, exit code). ``"new"`` says it needs the full
    record only of runs it has not opened yet (no opening kind delivered, refused or queued)
    and of open runs squeue lists as ended: the others may come as squeue's plain listing
    (``source == "squeue-list"``: ids, states, times, hosts, no allocation), so a steady cycle
    asks Slurm for ids and states only. A plan must not send a run's allocation from a
    listed record (the full record comes once the run needs it).
    """

    squeue: JobFilter | None = None
    sacct: bool = False
    detail: str = "all"

    def __post_init__(self) -> None:
        if self.detail not in ("all", "new"):
            raise ValueError(f"SlurmNeeds.detail is 'all' or 'new', not {self.detail!r}")


@dataclass(frozen=True)
class View:
    """What Slurm said in one cycle, and whether each query succeeded.

    ``active`` comes from squeue, ``ended`` from the sacct window and, after it, from the
    engine's lookup by job id of tracked runs the window missed (``looked_up`` of them, the
    last ones). A failed query leaves its list empty and its ``*_ok`` false: connectors must
    not plan a stop or cancel from it. ``ends_only``: the window asked sacct for ended runs
    only (``WINDOW_ENDS``), and ``listed_ends`` are the end times of the jobs squeue listed as
    ended, which such a window must hold (the engine's check of an empty answer).
    """

    now: float
    active: tuple[Job, ...] = ()
    ended: tuple[Job, ...] = ()
    window: SacctWindow | None = None
    squeue_ok: bool = False
    sacct_ok: bool = False
    looked_up: int = 0
    ends_only: bool = False
    listed_ends: tuple[int, ...] = ()

    @property
    def slurm_ok(self) -> bool:
        """`view.slurm_ok` is true when every query of the cycle succeeded."""
        return self.squeue_ok and self.sacct_ok


@dataclass(frozen=True)
class Scope:
    """What a run is limited to: ``--jobid`` (several allowed) and ``--limit`` per direction."""

    job_ids: tuple[int, ...] = ()
    limit: int | None = None

    def covers(self, job: Job) -> bool:
        """`scope.covers(job)` is true when the run may act on ``job``."""
        if not self.job_ids:
            return True
        return job.job_id in self.job_ids or (
            job.array_job_id is not None and job.array_job_id in self.job_ids
        )


@dataclass(frozen=True)
class Snapshot:
    """What the store says for one connector before planning: delivered, queued and failed
    (for good) keys per action kind, and its sacct watermark (None on a first run, or when the
    store was lost)."""

    delivered: Mapping[str, frozenset[str]] = field(default_factory=dict)
    queued: Mapping[str, frozenset[str]] = field(default_factory=dict)
    failed: Mapping[str, frozenset[str]] = field(default_factory=dict)
    watermark: float | None = None
    delivered_at: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def since(self, kind: str, key: str) -> float | None:
        """When ``kind`` was delivered for ``key`` (only for the connector's ``timed`` kinds)."""
        return self.delivered_at.get(kind, {}).get(key)

    def done(self, kind: str, key: str) -> bool:
        """`snapshot.done("start", key)`: delivered already, waiting in the outbox, or refused
        for good (recorded and reported once, not sent again every cycle)."""
        return (key in self.delivered.get(kind, frozenset())
                or key in self.queued.get(kind, frozenset())
                or key in self.failed.get(kind, frozenset()))


@dataclass(frozen=True)
class SlurmContext:
    """What a connector may use of Slurm beyond the cycle's view: the reader (for the job
    files, or one batched lookup) and Slurm's cluster name. Connectors never run Slurm
    commands except through this. ``dry_run``: the runs only plan and report (``--dry-run``):
    ``observe`` must then not make even the writes it would make once to set itself up (a
    service's registration)."""

    reader: SlurmReader
    cluster: str | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class Kind:
    """One kind of action a connector plans, as the engine must treat it.

    ``side``: START (records, submissions, approvals) or STOP (stops, cancels, holds): what
    ``--direction`` and ``--limit`` count it as, and starts go before stops of the same key.
    ``destructive``: the stop guard holds it back when Slurm's word is in doubt (a failed or
    empty query, too large a share of tracked jobs). ``timed``: ``plan`` reads when it was
    delivered (``snapshot.since``). ``batched``: applied together through ``apply_many``.
    ``opens``/``closes``: its delivery opens a run the service then holds (a record started)
    or closes it (the record stopped). The engine tracks the runs opened and not closed: it
    looks them up in sacct when the window has passed them, the stop guard weighs stops
    against them, and ``status`` says how many ended and are not closed. None: a kind named
    ``start`` opens and one named ``stop`` closes.
    """

    name: str
    side: Direction
    destructive: bool = False
    timed: bool = False
    batched: bool = False
    opens: bool | None = None
    closes: bool | None = None

    def __post_init__(self) -> None:
        if self.side not in (Direction.START, Direction.STOP):
            raise ValueError(f"kind {self.name!r}: side must be start or stop, not {self.side}")


#: The kinds of a connector that declares none: records started and stopped.
START_KIND = Kind("start", Direction.START)
STOP_KIND = Kind("stop", Direction.STOP, destructive=True)


class KindTable(Mapping[str, Kind]):
    """A connector's kinds by name; ``table.side(name)``, ``table.destructive(name)``. A name
    it does not declare is a ``KeyError`` naming the connector's kinds."""

    def __init__(self, kinds: Sequence[Kind], owner: str = "connector") -> None:
        self._kinds = {k.name: k for k in kinds}
        self._owner = owner
        if len(self._kinds) != len(kinds):
            raise ValueError(f"{owner}: a kind is declared twice: {[k.name for k in kinds]}")

    def __getitem__(self, name: str) -> Kind:
        try:
            return self._kinds[name]
        except KeyError:
            raise KeyError(f"{self._owner} planned an action of kind {name!r}, which it does "
                           f"not declare (its kinds: {', '.join(self._kinds)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)

    def starts(self, name: str) -> bool:
        """Whether ``name`` is on the start side."""
        return self[name].side is Direction.START

    def destructive(self, name: str) -> bool:
        return self[name].destructive

    def opening(self) -> tuple[str, ...]:
        """The kinds whose delivery opens a run (``Kind.opens``)."""
        return tuple(k.name for k in self._kinds.values()
                     if (k.name == "start" if k.opens is None else k.opens))

    def closing(self) -> tuple[str, ...]:
        """The kinds whose delivery closes a run (``Kind.closes``)."""
        return tuple(k.name for k in self._kinds.values()
                     if (k.name == "stop" if k.closes is None else k.closes))


@dataclass(frozen=True)
class Fact:
    """Something ``plan`` decided that needs nothing sent: recorded in the store as the
    delivery of ``kind`` for ``key`` (already done: the service has it; refused: it must never
    be sent, and ``status`` lists why), and shown in the run's report."""

    kind: str
    key: str
    detail: str
    refused: bool = False


@dataclass(frozen=True)
class Plan:
    """What ``plan`` returns: the actions to apply (in order) and the facts to record."""

    actions: tuple[Action, ...] = ()
    facts: tuple[Fact, ...] = ()


def delivery_key(job: Job) -> str:
    """`delivery_key(job)` is ``cluster/job_id/start_time``: a requeued run is a new key."""
    return f"{job.cluster or '-'}/{job.job_id}/{job.start_time or 0}"


class Connector(ABC):
    """One outside service. Subclasses set ``name`` and ``schema`` (the JSON Schema of their
    settings under ``connectors.<name>`` in config.json) and implement the three methods."""

    name: ClassVar[str]
    schema: ClassVar[Mapping[str, Any]]
    default_concurrency: ClassVar[int] = 4
    #: What it plans, and how the engine treats each kind (``Kind``). An action of a kind not
    #: listed here is a bug of the connector: reported, never applied.
    kinds: ClassVar[tuple[Kind, ...]] = (START_KIND, STOP_KIND)

    @classmethod
    def kind_table(cls) -> KindTable:
        """Its ``kinds`` by name."""
        return KindTable(cls.kinds, f"connector {getattr(cls, 'name', cls.__name__)!r}")

    @classmethod  # noqa: B027 - optional hook, nothing to add by default
    def add_commands(cls, commands: Any) -> None:
        """Add its own subcommands to the CLI: ``commands`` is the ``slurm-sync`` subparsers
        object; a subcommand sets ``handler=fn`` (``fn(ctx) -> int``, ``ctx`` a
        ``slurm_sync.commands.CommandContext`` holding the parsed ``args``). All commands share
        one namespace: prefix the ``dest`` of your options (``motd_user``)."""

    @classmethod
    def adapt_config(cls, data: Mapping[str, Any], path: str) -> Any:
        """Another tool's config file this connector can run from (cc-slurm-sync's for
        ClusterCockpit): an ``AdaptedConfig`` (``slurm_sync.config``), or None when ``data``
        is not such a file."""
        return None

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = settings
        # Problems found while setting up that do not stop a run (a secret file others can
        # read...): the CLI logs them at every run and ``check`` lists them.
        self.warnings: list[str] = []
        # Set by ``apply`` when the service says the connector itself is misconfigured (a 400
        # naming the payload's schema, a wrong API version): the rest of its actions wait in the
        # outbox, the engine reports this line and the run exits non-zero. Cleared each cycle.
        self.halted: str | None = None

    @property
    def concurrency(self) -> int:
        """How many actions of this connector may be applied at once (``concurrency`` in its
        settings; the engine's thread pool for it is this big)."""
        return int(self.settings.get("concurrency", self.default_concurrency))

    def secret(self, key: str) -> Secret:
        """The secret that ``settings[key]`` refers to (``{"file": ...}`` or ``{"env": ...}``),
        with its warnings added to ``self.warnings``; a ConfigError names what is wrong.
        ``key`` may be dotted (``rest.token``) for a secret inside a section."""
        value: Any = self.settings
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        ref = SecretRef.from_config(value, key=f"$.connectors.{self.name}.{key}")
        secret = resolve_secret(ref)
        self.warnings.extend(secret.warnings)
        return secret

    def bind(self, slurm: SlurmContext) -> None:  # noqa: B027 - optional hook
        """Given Slurm's reader and cluster name once, before the first cycle."""

    def observe(self, view: View, snapshot: Snapshot) -> Any:
        """Look at the service before planning (I/O allowed, read only: it runs under
        ``--dry-run`` too): for example list what it holds. Returns a value (a frozen type of
        the connector's own) that ``plan`` gets as ``observed``; None by default."""
        return None

    @abstractmethod
    def needs(self) -> SlurmNeeds:
        """What this connector wants from Slurm each cycle."""

    @abstractmethod
    def plan(
        self, view: View, snapshot: Snapshot, direction: Direction, scope: Scope,
        observed: Any = None,
    ) -> Plan | list[Action]:
        """The actions this cycle calls for, and facts to record. Pure: a function of its
        arguments (``observed`` is what ``observe`` returned), no I/O, no clock (``view.now``
        is the time), no logging."""

    @abstractmethod
    def apply(self, action: Action) -> Outcome:
        """Carry out one action; report failures as an ``Outcome``, never by raising."""

    def apply_many(self, actions: Sequence[Action]) -> list[Outcome]:
        """Carry out actions of one ``batched`` kind together; one outcome per action, in
        order. The default applies them one by one."""
        return [self.apply(action) for action in actions]

    def check(self) -> list[str]:
        """Problems ``slurm-sync check`` should report (service unreachable, file not
        writable...); empty when all is well. Must not change anything."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Release what the connector holds (sessions, files)."""


def _entry_points() -> list[metadata.EntryPoint]:
    found: Any = metadata.entry_points()
    if hasattr(found, "select"):  # Python 3.10+
        return list(found.select(group=ENTRY_POINT_GROUP))
    return list(found.get(ENTRY_POINT_GROUP, []))  # Python 3.9: a dict of groups


class Catalog(Mapping[str, "type[Connector]"]):
    """The installed connectors by name (the ``slurm_sync.connectors`` entry points), each
    class imported when first asked for: a run loads the connectors its config enables, not
    every one installed (bank's and Buildkite's modules, with what they import, were 0.2 s of
    each cron run's start-up). Iterating, ``len`` and ``in`` read names only; ``values()`` and
    ``items()`` load all (for the CLI's help and a connector's own command).

    An entry point that does not load, or is not a ``Connector``, is a ConfigError naming it,
    raised when it is asked for."""

    def __init__(self, entries: Sequence[metadata.EntryPoint]) -> None:
        self._entries = {entry.name: entry for entry in entries}
        self._loaded: dict[str, type[Connector]] = {}

    def __getitem__(self, name: str) -> type[Connector]:
        if name not in self._loaded:
            entry = self._entries[name]  # KeyError for a name nothing installs
            try:
                loaded = entry.load()
            except Exception as exc:  # a site's broken package must say which one it is
                raise ConfigError(
                    f"connector {entry.name!r} ({entry.value}) does not load: {exc}"
                ) from exc
            if not (isinstance(loaded, type) and issubclass(loaded, Connector)):
                raise ConfigError(
                    f"connector {entry.name!r} ({entry.value}) is not a Connector class")
            self._loaded[name] = loaded
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def schemas(self) -> Mapping[str, Mapping[str, Any]]:
        """Each connector's settings schema by name, its class loaded when its name is asked
        for (the config's validation asks for the connectors a config names)."""
        return _Schemas(self)


class _Schemas(Mapping[str, Mapping[str, Any]]):
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def __getitem__(self, name: str) -> Mapping[str, Any]:
        return dict(self._catalog[name].schema)

    def __iter__(self) -> Iterator[str]:
        return iter(self._catalog)

    def __len__(self) -> int:
        return len(self._catalog)


def discover() -> Catalog:
    """Every installed connector by name, from the ``slurm_sync.connectors`` entry points,
    each class loaded on first use (``Catalog``)."""
    return Catalog(_entry_points())
