"""Load and validate ``config.json``; an error names the JSON path, the bad value and what was
expected, and nothing is changed anywhere before the config is valid.

    >>> config = load_config("config.json")  # doctest: +SKIP
    >>> config.slurm.commands.argv("squeue", ["--json"])  # doctest: +SKIP
    ['/usr/bin/squeue', '--json']
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from sync.errors import ConfigError
from sync.slurm.run import SlurmCommands

__all__ = ["CORE_SCHEMA", "Config", "SlurmSettings", "config_from_dict", "load_config"]

SLURM_COMMANDS = ["squeue", "sacct", "scontrol", "sinfo", "sbatch", "scancel", "sacctmgr"]

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
    },
}


@dataclass(frozen=True)
class SlurmSettings:
    """How to reach Slurm: its commands and, optionally, its StateSaveLocation."""

    commands: SlurmCommands = field(default_factory=SlurmCommands)
    state_save_location: str | None = None


@dataclass(frozen=True)
class Config:
    """The validated configuration."""

    cluster: str | None = None
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    path: str | None = None


def _json_path(error: jsonschema.ValidationError) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def config_from_dict(data: Mapping[str, Any], path: str | None = None) -> Config:
    """Validate ``data`` against the schema and build a ``Config``; raise ``ConfigError``."""
    validator = jsonschema.Draft202012Validator(CORE_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        where = f"{path}: " if path else ""
        lines = [
            f"{where}{_json_path(e)}: {e.message}" for e in errors[:10]
        ]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    slurm = data.get("slurm", {})
    commands = SlurmCommands(
        bin_dir=slurm.get("bin_dir"),
        paths=dict(slurm.get("commands", {})),
        prefix=tuple(slurm.get("prefix", ())),
        timeout=float(slurm.get("timeout", 120)),
    )
    return Config(
        cluster=data.get("cluster"),
        slurm=SlurmSettings(
            commands=commands, state_save_location=slurm.get("state_save_location")
        ),
        path=path,
    )


def load_config(path: str | None) -> Config:
    """Read ``path`` (None: built-in defaults, Slurm's commands from PATH)."""
    if path is None:
        return Config()
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such config file") from exc
    except PermissionError as exc:
        raise ConfigError(f"{path}: not readable by uid {os.getuid()}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    return config_from_dict(data, path)
