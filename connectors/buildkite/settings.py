"""The Buildkite connector's settings, read once: every default is here and nowhere else.

    >>> settings = Settings.parse({
    ...     "mode": "stacks", "queue": "slurm",
    ...     "stacks": {"token": {"file": "/etc/slurm-sync/bk"}, "stack_key": "hpc1"},
    ...     "agent": {"config": "/etc/bk.cfg", "build_root": "/scratch/bk"},
    ...     "batch_dir": "/scratch/bk/batches"})
    >>> settings.max_submits, settings.cancel_grace_seconds, settings.stacks.reservation_seconds
    (3, 60.0, 900)
    >>> SCHEMA["properties"]["taken_grace_seconds"]["default"]
    120.0

``SCHEMA`` (the JSON Schema of ``connectors.buildkite`` in config.json) takes its ``default``
annotations from the dataclasses' fields, so the two never disagree. ``concurrency`` is the
core's (``Connector.default_concurrency``). Tokens stay secret references here: the connector
resolves them (``Connector.secret``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from slurm_sync.config import thaw
from slurm_sync.connectors.buildkite.policy import POLICY_SCHEMA, QueuePolicy
from slurm_sync.errors import ConfigError
from slurm_sync.secrets import SECRET_REF_SCHEMA

__all__ = ["MODES", "SCHEMA", "AgentSettings", "RestSettings", "Settings", "StacksSettings",
           "defaults"]

MODES = ("rest", "stacks")
_WHERE = "$.connectors.buildkite"


@dataclass(frozen=True)
class RestSettings:
    """Mode rest: an organization's builds through the REST API (``Bearer`` API token)."""

    organization: str
    token: Mapping[str, Any]
    url: str = "https://api.buildkite.com"
    window_hours: float = 96.0
    pipelines: tuple[str, ...] = ()

    @property
    def window_seconds(self) -> float:
        return self.window_hours * 3600


@dataclass(frozen=True)
class StacksSettings:
    """Mode stacks: one queue's jobs through the Stacks API (cluster agent token)."""

    token: Mapping[str, Any]
    stack_key: str
    url: str = "https://agent.buildkite.com"
    reservation_seconds: int = 900


@dataclass(frozen=True)
class AgentSettings:
    """How each Slurm job runs ``buildkite-agent start --acquire-job``."""

    config: str
    build_root: str
    command: str = "buildkite-agent"
    build_path_per: str = "job"
    log_dir: str | None = None

    @property
    def per_build(self) -> bool:
        """The jobs of a build share ``build_root/<pipeline>/<build>`` (never pruned)."""
        return self.build_path_per == "build"


@dataclass(frozen=True)
class Settings:
    """``connectors.buildkite`` as the connector uses it: ``mode``, ``queue``, ``agent`` and
    ``batch_dir`` are required, and the section of the mode (``rest`` or ``stacks``)."""

    mode: str
    queue: str
    agent: AgentSettings
    batch_dir: str
    rest: RestSettings | None = None
    stacks: StacksSettings | None = None
    tags: frozenset[str] = frozenset()
    job_name: str = "buildkite"
    policy: QueuePolicy = field(default_factory=QueuePolicy)
    max_in_flight: int = 0  # 0: no limit
    pipeline_limits: Mapping[str, int] = field(default_factory=dict)
    max_submits: int = 3
    cancel_grace_seconds: float = 60.0
    taken_grace_seconds: float = 120.0
    cancel_resend_seconds: float = 600.0
    timeout: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "pipeline_limits", MappingProxyType(
            {str(k): int(v) for k, v in self.pipeline_limits.items()}))

    @property
    def agent_tags(self) -> str:
        """What ``--tags`` the agents get: ``queue=<queue>`` and the configured tags."""
        return ",".join([f"queue={self.queue}", *sorted(self.tags)])

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Settings:
        """The settings of a validated ``connectors.buildkite`` object; a key left out takes
        its default from these classes. A ConfigError names what the schema cannot say is
        wrong: the section the mode needs, a token read from a ``SLURM_*`` variable, a policy
        whose defaults clash."""
        _refuse_slurm_variables(raw)
        mode = str(raw["mode"])
        rest = stacks = None
        if mode == "rest":
            section = raw.get("rest")
            if not section:
                raise ConfigError(f"{_WHERE}.rest: required in mode 'rest'")
            rest = RestSettings(
                organization=str(section["organization"]), token=section["token"],
                **_given(RestSettings, section, ("organization", "token"),
                         floats=("window_hours",), tuples=("pipelines",)))
        else:
            section = raw.get("stacks")
            if not section:
                raise ConfigError(f"{_WHERE}.stacks: required in mode 'stacks'")
            stacks = StacksSettings(
                token=section["token"], stack_key=str(section["stack_key"]),
                **_given(StacksSettings, section, ("token", "stack_key")))
        agent = raw["agent"]
        return cls(
            mode=mode, queue=str(raw["queue"]), batch_dir=str(raw["batch_dir"]),
            agent=AgentSettings(config=str(agent["config"]), build_root=str(agent["build_root"]),
                                **_given(AgentSettings, agent, ("config", "build_root"))),
            rest=rest, stacks=stacks, tags=frozenset(str(t) for t in raw.get("tags", ())),
            policy=QueuePolicy.from_settings(thaw(raw.get("policy", {})), f"{_WHERE}.policy"),
            **_given(cls, raw, ("mode", "queue", "agent", "batch_dir", "rest", "stacks", "tags",
                                "policy"),
                     floats=("cancel_grace_seconds", "taken_grace_seconds",
                             "cancel_resend_seconds", "timeout")))


def _given(cls: type, raw: Mapping[str, Any], skip: tuple[str, ...],
           floats: tuple[str, ...] = (), tuples: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of ``cls`` that ``raw`` sets (but ``skip``), numbers as the field's type."""
    given = {f.name: raw[f.name] for f in dataclasses.fields(cls)
             if f.name in raw and f.name not in skip}
    for name in floats:
        if name in given:
            given[name] = float(given[name])
    for name in tuples:
        if name in given:
            given[name] = tuple(str(v) for v in given[name])
    return given


def _refuse_slurm_variables(raw: Mapping[str, Any]) -> None:
    """A token read from a ``SLURM_*`` variable is refused: Slurm hands every such variable of
    the environment a job is submitted from to the job, whatever ``--export`` says. sbatch
    runs here without the service's environment, but an srun, salloc or wrapper the service
    is run from would still pass it on to every job."""
    for section in ("rest", "stacks"):
        ref = (raw.get(section) or {}).get("token")
        name = ref.get("env") if isinstance(ref, Mapping) else None
        if isinstance(name, str) and name.startswith("SLURM_"):
            raise ConfigError(
                f"{_WHERE}.{section}.token: the variable {name} is a SLURM_* "
                "variable, which Slurm passes to every job (even with --export=NONE); give "
                "the token another name, or read it from a file")


def _json(value: Any) -> Any:
    """A default as config.json writes it."""
    if isinstance(value, (frozenset, tuple)):
        return sorted(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _defaults_of(cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        if value is not None:
            out[f.name] = _json(value)
    return out


def defaults() -> dict[str, Any]:
    """Every default, as config.json would write it, sections under their names.

    >>> defaults()["rest"]["window_hours"], defaults()["max_in_flight"]
    (96.0, 0)
    """
    top = _defaults_of(Settings, skip=("policy",))
    top["rest"] = _defaults_of(RestSettings)
    top["stacks"] = _defaults_of(StacksSettings)
    top["agent"] = _defaults_of(AgentSettings)
    return top


def _with_defaults(properties: Mapping[str, Any], found: Mapping[str, Any]) -> dict[str, Any]:
    return {name: ({**spec, "default": found[name]}
                   if name in found and not isinstance(found[name], dict) else spec)
            for name, spec in properties.items()}


_DEFAULTS = defaults()

_REST: dict[str, Any] = {
    "url": {"type": "string", "pattern": "^https?://"},
    "organization": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
    "token": SECRET_REF_SCHEMA,
    "window_hours": {"type": "number", "exclusiveMinimum": 0, "maximum": 8760},
    "pipelines": {"type": "array", "items": {"type": "string"}},
}
_STACKS: dict[str, Any] = {
    "url": {"type": "string", "pattern": "^https?://"},
    "token": SECRET_REF_SCHEMA,
    "stack_key": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,80}$"},
    "reservation_seconds": {"type": "integer", "minimum": 60, "maximum": 3600},
}
_AGENT: dict[str, Any] = {
    "command": {"type": "string", "minLength": 1},
    "config": {"type": "string", "pattern": "^/"},
    "build_root": {"type": "string", "pattern": "^/"},
    "build_path_per": {"enum": ["job", "build"]},
    "log_dir": {"type": "string", "pattern": "^/"},
}
_PROPERTIES: dict[str, Any] = {
    "mode": {"enum": list(MODES)},
    "queue": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
    "tags": {"type": "array", "items": {"type": "string", "pattern": "^[^,=\\s]+=[^,\\s]*$"},
             "description": "agent tags of this connector's agents besides queue=..."},
    "rest": {"type": "object", "additionalProperties": False,
             "required": ["organization", "token"],
             "properties": _with_defaults(_REST, _DEFAULTS["rest"])},
    "stacks": {"type": "object", "additionalProperties": False,
               "required": ["token", "stack_key"],
               "properties": _with_defaults(_STACKS, _DEFAULTS["stacks"])},
    "agent": {"type": "object", "additionalProperties": False,
              "required": ["config", "build_root"],
              "properties": _with_defaults(_AGENT, _DEFAULTS["agent"])},
    "job_name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
    "batch_dir": {"type": "string", "pattern": "^/"},
    "policy": POLICY_SCHEMA,
    "max_in_flight": {"type": "integer", "minimum": 0},
    "pipeline_limits": {"type": "object", "additionalProperties": {"type": "integer",
                                                                  "minimum": 0}},
    "max_submits": {"type": "integer", "minimum": 1, "maximum": 20},
    "cancel_grace_seconds": {"type": "number", "minimum": 0},
    "taken_grace_seconds": {"type": "number", "minimum": 0},
    "cancel_resend_seconds": {"type": "number", "minimum": 30},
    "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
}

#: The JSON Schema of ``connectors.buildkite``; its ``default`` values come from the dataclasses.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["mode", "queue", "agent", "batch_dir"],
    "properties": _with_defaults(_PROPERTIES, _DEFAULTS),
}
