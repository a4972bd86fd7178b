"""The ClusterCockpit connector's settings, read once: every default is here and nowhere else.

    >>> settings = Settings.parse({"url": "https://cc.example.org",
    ...                            "token": {"file": "/etc/slurm-sync/cc-token"}})
    >>> settings.reconcile, settings.page_size, settings.timeout
    ('first_run', 1000, 30.0)

``SCHEMA`` (the JSON Schema of ``connectors.clustercockpit`` in config.json) takes its
``default`` annotations from ``Settings``' fields, so the two never disagree; docs/clustercockpit.md
says the same (a test reads its table against ``Settings``). ``concurrency`` is the core's
(``Connector.default_concurrency``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from slurm_sync.errors import ConfigError
from slurm_sync.secrets import SECRET_REF_SCHEMA

__all__ = ["API_VERSIONS", "RECONCILE_MODES", "SCHEMA", "HostMap", "Settings"]

API_VERSIONS = ("1.4", "1.5")
RECONCILE_MODES = ("first_run", "always", "never")
_WHERE = "$.connectors.clustercockpit"


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where}: {pattern!r} is not a regular expression: {exc}") from exc


@dataclass(frozen=True)
class HostMap:
    """The host-side mappings: accelerators, node_regex and subclusters, compiled once."""

    accelerators: tuple[tuple[str, re.Pattern[str] | None, Mapping[int, str]], ...] = ()
    node_regex: re.Pattern[str] | None = None
    subclusters: tuple[tuple[re.Pattern[str], str], ...] = ()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> HostMap:
        """`HostMap.from_settings({"node_regex": "^gpu"})`; a bad regex is a ConfigError
        naming its key."""
        accelerators = []
        for key, value in dict(settings.get("accelerators", {})).items():
            where = f"{_WHERE}.accelerators[{key!r}]"
            pattern = _compile(key, where) if key.startswith("^") else None
            if isinstance(value, Mapping):
                table = {int(i): str(bus) for i, bus in value.items()}
            else:
                table = {i: str(bus) for i, bus in enumerate(value)}
            accelerators.append((key, pattern, table))
        node_regex = settings.get("node_regex")
        return cls(
            accelerators=tuple(accelerators),
            node_regex=_compile(node_regex, f"{_WHERE}.node_regex") if node_regex else None,
            subclusters=tuple(
                (_compile(k, f"{_WHERE}.subclusters[{k!r}]"), v)
                for k, v in dict(settings.get("subclusters", {})).items()
            ),
        )

    def bus_ids(self, hostname: str) -> Mapping[int, str] | None:
        """The host's {gres index: PCI bus id}, or None when no entry names the host (a regex
        entry must match the whole name; otherwise the longest matching prefix wins, as
        cc-slurm-sync's prefixes did)."""
        best: tuple[int, Mapping[int, str]] | None = None
        for key, pattern, table in self.accelerators:
            if pattern is not None:
                if pattern.fullmatch(hostname):
                    return table
            elif hostname.startswith(key) and (best is None or len(key) > best[0]):
                best = (len(key), table)
        return best[1] if best else None

    def keeps(self, hostname: str) -> bool:
        """`hosts.keeps(name)`: the host matches node_regex (or there is none)."""
        return self.node_regex is None or bool(self.node_regex.search(hostname))

    def subcluster(self, hostname: str) -> str | None:
        """The subCluster of the first subclusters regex that matches, None for none."""
        for pattern, name in self.subclusters:
            if pattern.search(hostname):
                return name
        return None


@dataclass(frozen=True)
class Settings:
    """``connectors.clustercockpit`` as the connector uses it. ``token`` is the secret
    reference (resolved by the connector, never kept here); ``hosts`` is ``accelerators``,
    ``node_regex`` and ``subclusters`` compiled."""

    url: str
    token: Mapping[str, Any]
    token_json_key: str | None = None
    api_version: str | None = None  # None: asked of cc-backend once per process
    cluster: str | None = None  # None: Slurm's cluster name
    hosts: HostMap = field(default_factory=HostMap)
    job_script: bool = True
    environment: bool = False
    environment_max_bytes: int = 50_000
    ca_bundle: str | None = None
    verify_tls: bool = True
    timeout: float = 30.0
    retries: int = 2
    reconcile: str = "first_run"
    page_size: int = 1000

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Settings:
        """The settings of a validated ``connectors.clustercockpit`` object; a key left out
        takes its default from this class."""
        given = {f.name: raw[f.name] for f in fields(cls)
                 if f.name in raw and f.name not in ("hosts", "url", "token")}
        for name in ("timeout",):
            if name in given:
                given[name] = float(given[name])
        return cls(url=str(raw["url"]), token=raw["token"], hosts=HostMap.from_settings(raw),
                   **given)

    @property
    def verify(self) -> bool | str:
        """What requests' ``verify`` gets: False, True or the CA bundle's path."""
        if not self.verify_tls:
            return False
        return self.ca_bundle or True


def defaults() -> dict[str, Any]:
    """`defaults()["page_size"]` is 1000: each setting's default, from ``Settings``."""
    return {f.name: f.default for f in fields(Settings)
            if f.default is not MISSING and f.default is not None}


_PROPERTIES: dict[str, Any] = {
    "url": {"type": "string", "pattern": "^https?://",
            "description": "cc-backend's address, without /api"},
    "token": SECRET_REF_SCHEMA,
    "token_json_key": {
        "type": "string", "pattern": "^[^.]+(\\.[^.]+)*$",
        "description": "the token file is JSON and the token is at this dotted key "
                       "(cc-slurm-sync's config.json: cc-backend.apikey)"},
    "api_version": {"enum": list(API_VERSIONS)},
    "cluster": {"type": "string", "minLength": 1,
                "description": "the cluster's name in cc-backend (default: Slurm's)"},
    "subclusters": {
        "type": "object",
        "additionalProperties": {"type": "string", "minLength": 1},
        "description": "hostname regex -> subCluster; unmatched jobs let cc-backend choose",
    },
    "accelerators": {
        "type": "object",
        "additionalProperties": {
            "oneOf": [
                {"type": "object",
                 "propertyNames": {"pattern": "^[0-9]+$"},
                 "additionalProperties": {"type": "string", "minLength": 1}},
                {"type": "array", "items": {"type": "string", "minLength": 1}},
            ]
        },
        "description": "hostname prefix (or ^regex) -> {gres index: PCI bus id} or a list",
    },
    "node_regex": {"type": "string", "minLength": 1},
    "job_script": {"type": "boolean"},
    "environment": {"type": "boolean"},
    "environment_max_bytes": {"type": "integer", "minimum": 0},
    "ca_bundle": {"type": "string", "pattern": "^/"},
    "verify_tls": {"type": "boolean"},
    "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
    "retries": {"type": "integer", "minimum": 0, "maximum": 10},
    "reconcile": {"enum": list(RECONCILE_MODES)},
    "page_size": {"type": "integer", "minimum": 1, "maximum": 100000},
}

#: The JSON Schema of ``connectors.clustercockpit``; its ``default`` values come from ``Settings``.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url", "token"],
    "properties": {
        name: {**spec, "default": defaults()[name]} if name in defaults() else spec
        for name, spec in _PROPERTIES.items()
    },
}
