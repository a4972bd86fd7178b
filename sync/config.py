"""Load and validate ``config.json``; an error names the JSON path, the bad value and what was
expected, and nothing is changed anywhere before the config is valid.

    >>> config = load_config("config.json", fragments={"events": EVENTS_SCHEMA})  # doctest: +SKIP
    >>> config.slurm.commands.argv("squeue", ["--json"])  # doctest: +SKIP
    ['/usr/bin/squeue', '--json']
    >>> config.connectors["events"].enabled  # doctest: +SKIP
    True

The config is checked against one schema: :data:`CORE_SCHEMA` with each connector's settings
fragment placed under ``properties.connectors.properties.<name>`` (:func:`combined_schema`).
Every error is collected in one pass and reported together (the first 10, then how many more).
Every key is described in ``docs/configuration.md``.

A value at a place where a fragment expects a secret reference (``sync.secrets``) is never shown
in an error; an object or array value is described by its keys or length, never dumped.

Before the schema, every value is checked for what no key can mean and what would fail later in
a way that is hard to read: ``NaN``/``Infinity`` and numbers beyond 64 bits, a NUL character or a
lone UTF-16 surrogate in a string, a key given twice, nesting deeper than 32 levels.
:func:`load_config` reads only a regular file (a FIFO would block), and then checks the files the
config names: ``state_dir`` is a folder or can be made one, its ``state.db`` is SQLite's, and
``metrics_file`` is in a folder that exists.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import jsonschema
import jsonschema.exceptions

from slurm_sync.errors import ConfigError
from slurm_sync.secrets import is_secret_ref_schema, secret_ref_problem
from slurm_sync.slurm.run import SlurmCommands

__all__ = [
    "CORE_SCHEMA",
    "ROOT_STATE_DIR",
    "AdaptedConfig",
    "Config",
    "ConfigAdapter",
    "ConnectorSettings",
    "SlurmSettings",
    "combined_schema",
    "config_from_dict",
    "default_state_dir",
    "load_config",
]

SLURM_COMMANDS = ["squeue", "sacct", "scontrol", "sinfo", "sbatch", "scancel", "sacctmgr"]

ROOT_STATE_DIR = "/var/lib/slurm-sync"

MAX_ERRORS_SHOWN = 10

MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32
TEN_YEARS = 10 * 365 * 86400

_ABSOLUTE_PATH: dict[str, Any] = {
    "type": "string",
    "pattern": "^/",
    "x-expected": "an absolute path",
}

_CONNECTOR_BASE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "enabled": {"type": "boolean"},
        "concurrency": {
            "type": "integer",
            "minimum": 1,
            "maximum": 64,
            "description": "How many of this connector's actions are applied at once.",
        },
    },
}
_BASE_KEYS = ("enabled", "concurrency")

CORE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "$comment": {"type": "string"},
        "cluster": {
            "type": "string",
            "minLength": 1,
            "description": "Slurm's cluster name; read from Slurm's output when left out.",
        },
        "state_dir": {
            **_ABSOLUTE_PATH,
            "description": "Where the state database and the lock live.",
        },
        "stop_guard_share": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1,
            "description": "Largest share of tracked jobs one cycle may stop without --force.",
        },
        "stop_guard_min": {
            "type": "integer",
            "minimum": 0,
            "description": "The share guard leaves alone cycles that stop at most this many.",
        },
        "max_lag_seconds": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "maximum": 31536000,
            "description": "A connector further behind Slurm than this (a run ended and not "
                           "stopped, an action queued, a watermark standing still) makes the run "
                           "exit 5 and check fail; null: never.",
        },
        "retry_base_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 86400,
            "description": "First wait before an action that failed for now is tried again.",
        },
        "retry_max_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 604800,
            "description": "Longest wait between two tries (the wait doubles up to it).",
        },
        "sacct_overlap_seconds": {
            "type": "integer",
            "minimum": 0,
            "maximum": TEN_YEARS,
            "description": "How far each sacct window reaches back before the watermark.",
        },
        "first_window_seconds": {
            "type": "integer",
            "exclusiveMinimum": 0,
            "maximum": TEN_YEARS,
            "description": "How far back the first sacct window reaches (no watermark yet).",
        },
        "retention_days": {
            "type": "number",
            "minimum": 1,
            "maximum": 3650,
            "description": "How long a finished run's delivery records are kept.",
        },
        "log_format": {"enum": ["text", "json"]},
        "metrics_file": {
            **_ABSOLUTE_PATH,
            "description": "Prometheus textfile written after each cycle.",
        },
        "hook_spool": {
            **_ABSOLUTE_PATH,
            "description": "Folder where contrib/slurm-sync-hook (PrologSlurmctld and "
                           "EpilogSlurmctld) records job events; `run --loop` syncs each job "
                           "as its event arrives (docs/hook.md).",
        },
        "slurm": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "bin_dir": {"type": "string", "minLength": 1},
                "commands": {
                    "type": "object",
                    "propertyNames": {"enum": SLURM_COMMANDS},
                    "additionalProperties": {"type": "string", "minLength": 1},
                },
                "prefix": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                "state_save_location": {"type": "string", "minLength": 1},
            },
        },
        "connectors": {
            "type": "object",
            "additionalProperties": _CONNECTOR_BASE,
            "description": "Connector name -> its settings; each has 'enabled' (default true).",
        },
    },
}
"""The core schema. Without fragments, ``connectors`` is only checked for its shape (objects
with a boolean ``enabled``); :func:`combined_schema` adds each connector's fragment."""


def default_state_dir() -> str:
    """`default_state_dir()` is ``/var/lib/slurm-sync`` for root (euid 0), else
    ``$XDG_STATE_HOME/slurm-sync`` (when that is an absolute path) or
    ``~/.local/state/slurm-sync``."""
    if os.geteuid() == 0:
        return ROOT_STATE_DIR
    xdg = os.environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):
        return os.path.join(xdg, "slurm-sync")
    return os.path.join(os.path.expanduser("~"), ".local", "state", "slurm-sync")


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    return value


def thaw(value: Any) -> Any:
    """`thaw(settings)` is a plain, mutable copy of frozen settings (dicts and lists), for
    code that wants plain JSON types (a JSON Schema check, a payload)."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(item) for item in value]
    return value


@dataclass(frozen=True)
class SlurmSettings:
    """How to reach Slurm: its commands and, optionally, its StateSaveLocation."""

    commands: SlurmCommands = field(default_factory=SlurmCommands)
    state_save_location: str | None = None


@dataclass(frozen=True)
class ConnectorSettings:
    """One entry of ``connectors``: its ``name``, whether it is ``enabled``, and its other
    ``settings`` (``enabled`` left out), read-only all the way down: objects are
    ``MappingProxyType``, arrays are tuples."""

    name: str
    enabled: bool = True
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", _freeze(self.settings))


def _no_connectors() -> Mapping[str, ConnectorSettings]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Config:
    """The validated configuration."""

    cluster: str | None = None
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    path: str | None = None
    state_dir: str = field(default_factory=default_state_dir)
    stop_guard_share: float = 0.5
    stop_guard_min: int = 10
    max_lag_seconds: float | None = 3600.0
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 3600.0
    sacct_overlap_seconds: int = 60
    first_window_seconds: int = 3600
    retention_days: float = 14.0
    log_format: str = "text"
    metrics_file: str | None = None
    hook_spool: str | None = None
    connectors: Mapping[str, ConnectorSettings] = field(default_factory=_no_connectors)


# --------------------------------------------------------------------------------- the schema


def _embed_fragment(name: str, fragment: Any) -> dict[str, Any]:
    """The schema of ``connectors.<name>``: the base (an object, ``enabled`` a boolean) and
    the connector's fragment, which is given its own ``$id`` so that its local ``$ref``s
    resolve, and is allowed an ``enabled`` key even when it closes its properties."""
    if isinstance(fragment, Mapping):
        try:
            jsonschema.Draft202012Validator.check_schema(thaw(fragment))
        except jsonschema.exceptions.SchemaError as exc:
            raise ConfigError(
                f"connector {name!r} has an invalid settings schema: {exc.message}"
            ) from exc
        own: Any = thaw(fragment)
        own.pop("$schema", None)
        own.setdefault("$id", f"urn:slurm-sync:connector:{quote(name, safe='')}")
        properties = own.get("properties")
        if properties is None:
            own["properties"] = {key: {} for key in _BASE_KEYS}
        elif isinstance(properties, dict):
            for key in _BASE_KEYS:
                properties.setdefault(key, {})
    elif isinstance(fragment, bool):
        own = fragment
    else:
        raise ConfigError(f"connector {name!r} has an invalid settings schema: not an object")
    return {**copy.deepcopy(_CONNECTOR_BASE), "allOf": [own]}


def combined_schema(fragments: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """`combined_schema({"events": {...}})` is :data:`CORE_SCHEMA` with each fragment under
    ``properties.connectors.properties.<name>`` and no other connector allowed; None gives the
    core schema (connectors checked for their shape only). Fragments are read as draft 2020-12
    (a ``$schema`` in them is dropped) and checked first: a broken one is a ConfigError naming
    its connector."""
    schema = copy.deepcopy(CORE_SCHEMA)
    if fragments is None:
        return schema
    connectors = schema["properties"]["connectors"]
    connectors["properties"] = {
        name: _embed_fragment(name, fragment) for name, fragment in fragments.items()
    }
    connectors["additionalProperties"] = False
    return schema


# --------------------------------------------------------------------------------- the errors

_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_UNKNOWN_CONNECTOR_AT = ("properties", "connectors", "additionalProperties")


def _json_path(parts: Any) -> str:
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _SIMPLE_KEY.match(part):
            path += f".{part}"
        else:
            path += f"[{json.dumps(part)}]"
    return path


def _sort_key(parts: Any) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, part) for part in parts)


def _summary(value: object) -> str:
    if isinstance(value, Mapping):
        keys = ", ".join(str(key) for key in list(value)[:5])
        more = ", ..." if len(value) > 5 else ""
        return f"an object with keys ({keys}{more})" if value else "an empty object"
    if isinstance(value, (list, tuple)):
        return f"an array of {len(value)} item{'' if len(value) == 1 else 's'}"
    return repr(value)


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    """``; did you mean 'state_dir'?`` for a near miss, "" when nothing is close.

    >>> _did_you_mean("stat_dir", ["state_dir", "cluster"])
    "; did you mean 'state_dir'?"
    """
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f"; did you mean {close[0]!r}?" if close else ""


def _touches_secret(error: jsonschema.ValidationError) -> bool:
    return is_secret_ref_schema(error.schema) or any(
        _touches_secret(sub) for sub in error.context
    )


def _describe(error: jsonschema.ValidationError) -> str:
    """What ``error`` says, with an object or array value summarised and a long value cut."""
    if _touches_secret(error):
        return secret_ref_problem(error.instance) or "not a valid secret reference"
    message = error.message
    instance = error.instance
    shown = repr(instance)
    if isinstance(instance, (Mapping, list)):
        message = message.replace(shown, _summary(instance))
    elif len(shown) > 80:
        message = message.replace(shown, shown[:77] + "...")
    schema = error.schema
    if error.validator == "pattern" and isinstance(schema, Mapping) and "x-expected" in schema:
        message += f" (expected {schema['x-expected']})"
    if error.context:
        best = jsonschema.exceptions.best_match(error.context)
        if best is not None:
            message += f"; closest: {_json_path(best.absolute_path)}: {_describe(best)}"
    return message


def _problems(
    errors: list[jsonschema.ValidationError], known: list[str] | None
) -> list[tuple[Any, str]]:
    """(instance path, message) of each error, unknown connectors spelled out, sorted by path
    and without duplicates."""
    found: dict[tuple[str, str], tuple[Any, str]] = {}
    for error in errors:
        parts = list(error.absolute_path)
        instance = error.instance
        if (
            known is not None
            and isinstance(instance, Mapping)
            and tuple(error.absolute_schema_path) == _UNKNOWN_CONNECTOR_AT
        ):
            names = ", ".join(known) if known else "none"
            for name in instance:
                if name not in known:
                    message = f"unknown connector {name!r}{_did_you_mean(name, known)}; " \
                              f"known: {names}"
                    found[(_json_path([*parts, name]), message)] = ([*parts, name], message)
            continue
        if error.validator == "additionalProperties" and isinstance(instance, Mapping):
            # one line per unknown key, at its own path, with the key it is closest to
            allowed = list(error.schema.get("properties", {})) if isinstance(
                error.schema, Mapping) else []
            for key in instance:
                if key not in allowed and isinstance(key, str):
                    message = f"unknown key {key!r}{_did_you_mean(key, allowed)}"
                    found[(_json_path([*parts, key]), message)] = ([*parts, key], message)
            continue
        message = _describe(error)
        found[(_json_path(parts), message)] = (parts, message)
    return sorted(found.values(), key=lambda item: (_sort_key(item[0]), item[1]))


class _Constant(float):
    """``NaN``, ``Infinity`` or ``-Infinity`` as written in the file, kept so that the value
    check can name it with its JSON path (``json`` would make it a float no key accepts)."""

    def __new__(cls, name: str) -> _Constant:
        made = super().__new__(cls, name)
        made.name = name
        return made

    name: str


class _Pairs(dict):  # type: ignore[type-arg]
    """An object as decoded, with the keys it gave more than once."""

    twice: list[str]


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    made = _Pairs(pairs)
    if len(made) != len(pairs):
        seen: set[str] = set()
        twice: set[str] = set()
        for key, _ in pairs:
            (twice if key in seen else seen).add(key)
        made.twice = sorted(twice)
    return made


_INT_BITS = 63
_CONTROL_IN_PATH = re.compile("[\x00\ud800-\udfff]")


def _text_problem(text: str) -> str | None:
    found = _CONTROL_IN_PATH.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character, which no path or name can hold"
    return (f"contains a lone UTF-16 surrogate (\\u{ord(found.group()):04x}), which is not "
            "text: write the character itself or its pair")


def _value_problems(data: object) -> list[tuple[Any, str]]:
    """(JSON path parts, problem) of each value no key can mean, depth first, without
    recursion (the data may be nested as deep as the decoder allowed)."""
    found: list[tuple[Any, str]] = []
    stack: list[tuple[tuple[Any, ...], object]] = [((), data)]
    while stack and len(found) <= MAX_ERRORS_SHOWN:
        parts, value = stack.pop()
        if len(parts) > MAX_DEPTH:
            found.append((parts, f"nested deeper than {MAX_DEPTH} levels: no key needs that"))
        elif isinstance(value, Mapping):
            for key in getattr(value, "twice", ()):
                found.append((parts, f"the key {key!r} is given twice: keep one"))
            for key, item in value.items():
                problem = _text_problem(key) if isinstance(key, str) else None
                if problem:
                    found.append(((*parts, key), f"the key {problem}"))
                else:
                    stack.append(((*parts, key), item))
        elif isinstance(value, (list, tuple)):
            stack.extend(((*parts, i), item) for i, item in enumerate(value))
        elif isinstance(value, _Constant):
            found.append((parts, f"{value.name} is not a number JSON allows: write a finite "
                                 "number"))
        elif isinstance(value, float) and not math.isfinite(value):
            found.append((parts, "a number too large to be a finite number: write a smaller "
                                 "one"))
        elif isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > _INT_BITS:
                found.append((parts, "a number beyond 64 bits: write a smaller one"))
        elif isinstance(value, str):
            problem = _text_problem(value)
            if problem:
                found.append((parts, f"the string {problem}"))
    return sorted(found, key=lambda item: (_sort_key(item[0]), item[1]))


def _raise_problems(problems: list[tuple[Any, str]], path: str | None) -> None:
    where = f"{path}: " if path else ""
    lines = [f"{where}{_json_path(parts)}: {message}" for parts, message in problems]
    shown = lines[:MAX_ERRORS_SHOWN]
    if len(lines) > MAX_ERRORS_SHOWN:
        rest = len(lines) - MAX_ERRORS_SHOWN
        shown.append(f"... and {rest} more error{'s' if rest > 1 else ''}")
    title = "invalid configuration"
    if len(lines) > 1:
        title += f", {len(lines)} errors"
    raise ConfigError(f"{title}:\n  " + "\n  ".join(shown))


def _validate(
    data: Mapping[str, Any], path: str | None, fragments: Mapping[str, Any] | None
) -> None:
    values = _value_problems(data)
    if values:
        _raise_problems(values, path)
    known: list[str] | None = None
    if fragments is not None:
        # only the fragments of the connectors the document names: each may load a module
        named = data.get("connectors")
        known = sorted(fragments)
        fragments = {n: fragments[n] for n in (named if isinstance(named, Mapping) else ())
                     if isinstance(n, str) and n in fragments}
    schema = combined_schema(fragments)
    validator = jsonschema.Draft202012Validator(schema)
    problems = _problems(list(validator.iter_errors(data)), known)
    if problems:
        _raise_problems(problems, path)


# --------------------------------------------------------------------------------- loading


def config_from_dict(
    data: Mapping[str, Any],
    path: str | None = None,
    fragments: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Validate ``data`` against the core schema and the connectors' ``fragments`` (connector
    name -> JSON Schema of its settings) and build a ``Config``; raise ``ConfigError``.

    With ``fragments`` None, connector settings are checked for their shape only (an object,
    ``enabled`` a boolean) and any name is accepted: for commands that run no connector. With a
    mapping (even empty), a connector it does not name is an error."""
    _validate(data, path, fragments)
    base, most = data.get("retry_base_seconds", 30), data.get("retry_max_seconds", 3600)
    if base > most:
        where = f"{path}: " if path else ""
        raise ConfigError(f"invalid configuration:\n  {where}$.retry_base_seconds: {base} is more "
                          f"than retry_max_seconds ({most})")
    slurm = data.get("slurm", {})
    commands = SlurmCommands(
        bin_dir=slurm.get("bin_dir"),
        paths=dict(slurm.get("commands", {})),
        prefix=tuple(slurm.get("prefix", ())),
        timeout=float(slurm.get("timeout", 120)),
    )
    connectors = {
        name: ConnectorSettings(
            name=name,
            enabled=bool(settings.get("enabled", True)),
            settings={key: value for key, value in settings.items() if key != "enabled"},
        )
        for name, settings in data.get("connectors", {}).items()
    }
    metrics_file = data.get("metrics_file")
    return Config(
        cluster=data.get("cluster"),
        slurm=SlurmSettings(
            commands=commands, state_save_location=slurm.get("state_save_location")
        ),
        path=path,
        state_dir=data.get("state_dir") or default_state_dir(),
        stop_guard_share=float(data.get("stop_guard_share", 0.5)),
        stop_guard_min=int(data.get("stop_guard_min", 10)),
        max_lag_seconds=(None if data.get("max_lag_seconds", 3600) is None
                         else float(data.get("max_lag_seconds", 3600))),
        retry_base_seconds=float(data.get("retry_base_seconds", 30)),
        retry_max_seconds=float(data.get("retry_max_seconds", 3600)),
        sacct_overlap_seconds=int(data.get("sacct_overlap_seconds", 60)),
        first_window_seconds=int(data.get("first_window_seconds", 3600)),
        retention_days=float(data.get("retention_days", 14)),
        log_format=str(data.get("log_format", "text")),
        metrics_file=metrics_file,
        hook_spool=data.get("hook_spool"),
        connectors=MappingProxyType(connectors),
    )


@dataclass(frozen=True)
class AdaptedConfig:
    """Another tool's config file read as slurm-sync's (``Connector.adapt_config``): the
    document to run with, the same settings in slurm-sync's own form to suggest, and what the
    file was and what to change (one line, for the warning)."""

    data: dict[str, Any]
    suggested: dict[str, Any]
    note: str


#: ``adapter(document, absolute_path)``: an ``AdaptedConfig``, or None for a file it does not know
ConfigAdapter = Callable[[Mapping[str, Any], str], "AdaptedConfig | None"]


def load_config(
    path: str | None,
    fragments: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    files: bool = True,
    adapters: Iterable[ConfigAdapter] = (),
) -> Config:
    """Read ``path`` (None: built-in defaults, Slurm's commands from PATH, no connector) and
    validate it as :func:`config_from_dict` does; then, unless ``files`` is false (to check a
    document alone, such as the shipped example), check the files it names. A document that
    one of ``adapters`` (the connectors' ``adapt_config``) recognises as another tool's runs
    as that adapter reads it, with a warning that shows slurm-sync's form. ``adapters`` is
    iterated only for a document with a key slurm-sync's own form has not (it may be a
    generator that loads connectors)."""
    if path is None:
        return Config()
    data = _decode(path, _read(path))
    own = isinstance(data, Mapping) and set(data) <= set(CORE_SCHEMA["properties"])
    for adapt in () if own else adapters:
        adapted = adapt(data, os.path.abspath(path)) if isinstance(data, Mapping) else None
        if adapted is not None:
            data = adapted.data
            logging.getLogger("slurm_sync.config").warning(
                "%s: %s The same settings in slurm-sync's form:\n%s", path, adapted.note,
                json.dumps(adapted.suggested, indent=2))
            break
    config = config_from_dict(data, path, fragments)
    if files:
        problems = _file_problems(config, data)
        if problems:
            _raise_problems(problems, path)
    return config


_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def _read(path: str) -> bytes:
    """The bytes of a regular file, opened without blocking (a FIFO would wait for a writer)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such config file") from exc
    except PermissionError as exc:
        raise ConfigError(f"{path}: not readable by uid {os.getuid()}") from exc
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError(f"{path}: cannot open the config file: {why}") from exc
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind != stat.S_IFREG:
            what = _KINDS.get(kind, "not a file")
            raise ConfigError(f"{path}: not a regular file ({what}): give the path of the "
                              "config.json file")
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        raw = b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than 16 MiB: is it the config file?")
    return raw


def _decode(path: str, raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_Constant, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deep: no key needs that") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise ConfigError(f"{path}: a number of more than 4300 digits ({str(exc)[:60]}...): "
                          "write a smaller one") from None


_SQLITE_HEADER = b"SQLite format 3\x00"


def _file_problems(config: Config, data: Mapping[str, Any]) -> list[tuple[Any, str]]:
    """Files the config names that cannot work, found before anything is changed: a state_dir
    that is a file or under one, a state.db that is not SQLite's, a metrics_file whose folder
    does not exist. Files that exist but cannot be read are left to the code that opens them."""
    found: list[tuple[Any, str]] = []
    state = config.state_dir
    at = ["state_dir"]
    problem = _folder_problem(state)
    if problem:
        found.append((at, problem + ": set state_dir to a folder"))
    else:
        database = os.path.join(state, "state.db")
        problem = _database_problem(database)
        if problem:
            found.append((at, problem))
    if config.metrics_file:
        at = ["metrics_file"]
        folder = os.path.dirname(config.metrics_file) or "/"
        problem = _folder_problem(folder)
        if problem is None and not os.path.isdir(folder):
            problem = (f"{folder} does not exist: create it (node_exporter's textfile "
                       "folder) or change metrics_file")
        elif problem:
            problem += ": change metrics_file"
        elif os.path.isdir(config.metrics_file):
            problem = f"{config.metrics_file} is a folder: name a file in it"
        if problem:
            found.append((at, problem))
    return found


def _folder_problem(path: str) -> str | None:
    """Why ``path`` cannot be a folder (it is something else, or under a file), or None: it is
    one, may become one, or cannot be told (no permission: the code that uses it says so)."""
    missing = path
    while True:
        try:
            info = os.stat(missing)
        except FileNotFoundError:
            parent = os.path.dirname(missing.rstrip("/")) or "/"
            if parent == missing:
                return None
            missing = parent
            continue
        except NotADirectoryError:
            parent = os.path.dirname(missing.rstrip("/")) or "/"
            if parent == missing:
                return f"{path} is under a file"
            missing = parent
            continue
        except PermissionError:
            return None
        except OSError as exc:
            return f"{path} cannot be used: {exc.strerror}"
        break
    if stat.S_ISDIR(info.st_mode):
        return None
    kind = _KINDS.get(stat.S_IFMT(info.st_mode), "a file")
    if missing == path:
        return f"{path} is {kind}, not a folder"
    return f"{path} is under {missing}, which is {kind}"


def _database_problem(path: str) -> str | None:
    """Why ``path`` is not a state database slurm-sync can open, or None (it is one, does not
    exist yet, is empty, or cannot be read here)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except (FileNotFoundError, PermissionError):
        return None
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror}"
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        header = os.read(fd, len(_SQLITE_HEADER)) if kind == stat.S_IFREG else b""
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror}"
    finally:
        os.close(fd)
    if kind != stat.S_IFREG:
        return (f"{path} is {_KINDS.get(kind, 'not a file')}, not a state database: move it "
                "away or set state_dir to another folder")
    if header and header != _SQLITE_HEADER:
        return (f"{path} is not an SQLite database (it is not slurm-sync's state): move it "
                "away or set state_dir to another folder")
    return None
