"""``slurm-sync motd show``: the board as a login shows it, for everyone or one user.

    slurm-sync -c /etc/slurm-sync/config.json motd show            # every line
    slurm-sync -c /etc/slurm-sync/config.json motd show -u alice   # alice's jobs only
    slurm-sync -c /etc/slurm-sync/config.json motd show --json

It reads the board the ``motd`` connector keeps (its ``directory`` in config.json): it needs the
config, not Slurm, and changes nothing.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from slurm_sync.commands import EXIT_FAILED, EXIT_OK, CommandContext
from slurm_sync_motd import board

__all__ = ["add_commands", "show_command"]


def add_commands(commands: Any) -> None:
    """``motd`` and its subcommands on ``commands`` (slurm-sync's subparsers object)."""
    mine: argparse.ArgumentParser = commands.add_parser(
        "motd", help="the 'who is running what' board (site connector motd)")
    sub = mine.add_subparsers(dest="motd_command", metavar="COMMAND", required=True)
    show = sub.add_parser("show", help="print the board's lines (exit 1 when it cannot be read)")
    show.add_argument("-u", "--user", dest="motd_user", metavar="USER",
                      help="only this user's jobs")
    show.add_argument("--json", dest="motd_json", action="store_true",
                      help="print JSON: the folder and its lines")
    show.set_defaults(handler=show_command)


def show_command(ctx: CommandContext) -> int:
    """Print the board; exit 1 when it cannot be read. Not configured: a ConfigError, exit 2."""
    settings = ctx.settings("motd")
    directory = str(settings["directory"])
    try:
        lines = board.read_lines(directory)
    except OSError as exc:
        ctx.err.print(f"motd: cannot read the board {directory}: {exc.strerror}",
                      markup=False, highlight=False)
        return EXIT_FAILED
    user = ctx.args.motd_user
    if user:
        lines = [line for line in lines if line.split(" ", 1)[0] == user]
    if ctx.args.motd_json:
        ctx.out.print_json(json.dumps({"directory": directory, "user": user, "lines": lines}))
    elif lines:
        for line in lines:
            ctx.out.print(line, markup=False, highlight=False, soft_wrap=True)
    else:
        ctx.out.print(f"no jobs on the board ({directory})"
                      + (f" for {user}" if user else ""), markup=False, highlight=False)
    return EXIT_OK
