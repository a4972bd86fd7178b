"""``slurm-sync buildkite ...``: the connector's own subcommands, for pipeline secrets.

    slurm-sync buildkite encrypt /etc/buildkite/agents.pub --name CODECOV_TOKEN
    slurm-sync buildkite decrypt-env /etc/buildkite/agents.key     # in the agents' env hook

Both need ``cryptography``, which only the extra ``slurm-sync[buildkite-secrets]`` installs:
``secrets`` is imported when one of them runs, and without it the command says what to
install (a ConfigError: exit 2) instead of failing with a traceback.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any

from slurm_sync.commands import CommandContext
from slurm_sync.errors import ConfigError

__all__ = ["add_commands", "decrypt_command", "encrypt_command"]

EXTRA = "slurm-sync[buildkite-secrets]"


def add_commands(commands: Any) -> None:
    """``buildkite encrypt`` and ``buildkite decrypt-env`` under the CLI's subparsers."""
    mine = commands.add_parser("buildkite", help="Buildkite helpers: pipeline secrets")
    sub = mine.add_subparsers(dest="bk_command", metavar="COMMAND", required=True)
    encrypt = sub.add_parser(
        "encrypt",
        help="encrypt a secret for a pipeline's env (asks for the value, never argv)")
    encrypt.add_argument("public_key", help="the agents' RSA public key (PEM)")
    encrypt.add_argument("--name", help="the variable's name (asked when left out)")
    encrypt.add_argument("--repository",
                         help="only builds of this repository may decrypt it")
    encrypt.set_defaults(handler=encrypt_command)
    decrypt = sub.add_parser(
        "decrypt-env", help="for the agent's environment hook: print exports of SECRET_* vars")
    decrypt.add_argument("private_key", help="the agents' RSA private key (PEM, mode 600)")
    decrypt.add_argument("--require-repository", action="store_true",
                         help="refuse secrets not bound to a repository")
    decrypt.set_defaults(handler=decrypt_command)


def _secrets() -> ModuleType:
    """The secret commands' module: it needs ``cryptography``, installed with the extra
    ``slurm-sync[buildkite-secrets]`` and by nothing else."""
    try:
        from slurm_sync.connectors.buildkite import secrets
    except ImportError as exc:
        raise ConfigError(f"buildkite secrets need the 'cryptography' package ({exc}): "
                          f"pip install '{EXTRA}'") from exc
    return secrets


def encrypt_command(ctx: CommandContext) -> int:
    """``slurm-sync buildkite encrypt``: the snippet for a pipeline's env; the value is
    asked for, never taken from argv."""
    args = ctx.args
    code: int = _secrets().cli_encrypt(args.public_key, name=args.name,
                                       repository=args.repository)
    return code


def decrypt_command(ctx: CommandContext) -> int:
    """``slurm-sync buildkite decrypt-env``: exports of the build's ``SECRET_*`` variables."""
    code: int = _secrets().cli_decrypt_env(ctx.args.private_key, os.environ, sys.stdout,
                                           require_repository=ctx.args.require_repository)
    return code
