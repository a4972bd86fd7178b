"""What a connector's own subcommand gets from the CLI (``Connector.add_commands``).

    @classmethod
    def add_commands(cls, commands):
        mine = commands.add_parser("bank", help="allocation bank helpers")
        reconcile = mine.add_subparsers(dest="bank_command", required=True).add_parser(
            "reconcile", help="...")
        reconcile.add_argument("--since", required=True)
        reconcile.set_defaults(handler=reconcile_command)

    def reconcile_command(ctx: CommandContext) -> int:
        settings = ctx.settings("bank")             # ConfigError (exit 2) when not configured
        ended = ctx.reader().sacct(window, JobFilter(states=("all",))).jobs
        ctx.out.print(...)
        return EXIT_OK

A handler returns one of the documented exit codes; a ``ConfigError`` it raises is exit 2, a
``SlurmError`` exit 3, as for the core's commands. The config is read only when the handler
asks for it, so a command that needs none (``clustercockpit discover-accelerators`` on a GPU
node) works without one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console

from slurm_sync.config import Config, load_config
from slurm_sync.errors import ConfigError
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner

if TYPE_CHECKING:
    from slurm_sync.connector import Connector

__all__ = ["EXIT_FAILED", "EXIT_LOCKED", "EXIT_OK", "EXIT_SLURM", "EXIT_USAGE",
           "CommandContext", "Handler"]

#: The CLI's exit codes a command may return (the engine's 3, 4 and 5 come from a cycle).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SLURM, EXIT_LOCKED = 0, 1, 2, 3, 75


@dataclass
class CommandContext:
    """The parsed arguments, where to print, and the config and Slurm on demand."""

    args: argparse.Namespace
    out: Console
    err: Console
    registry: Mapping[str, type[Connector]]
    config_path: str | None = None
    _config: Config | None = field(default=None, repr=False)

    def config(self) -> Config:
        """The validated config (``-c``), read once; a ConfigError names what is wrong."""
        if self._config is None:
            self._config = load_config(
                self.config_path, {n: dict(c.schema) for n, c in self.registry.items()},
                adapters=[c.adapt_config for c in self.registry.values()])
        return self._config

    def settings(self, name: str) -> Mapping[str, Any]:
        """The settings of the enabled connector ``name``; a ConfigError when it has none."""
        found = self.config().connectors.get(name)
        if found is None or not found.enabled:
            raise ConfigError(f"{self.args.command}: no enabled {name!r} connector in the "
                              f"config{' ' + self.config_path if self.config_path else ''}")
        return found.settings

    def reader(self) -> SlurmReader:
        """Slurm, as the config says to reach it."""
        config = self.config()
        return SlurmReader(Runner(config.slurm.commands), cluster=config.cluster,
                           state_save_location=config.slurm.state_save_location)


Handler = Callable[[CommandContext], int]
