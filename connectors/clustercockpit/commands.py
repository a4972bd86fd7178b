"""``slurm-sync clustercockpit ...``: the connector's own subcommands.

    slurm-sync clustercockpit discover-accelerators
    {"accelerators": {"g01": {"0": "00000000:03:00.0", "1": "00000000:44:00.0"}}}

``add_commands`` adds them to the CLI (``Connector.add_commands``); each needs no config unless
it asks for one (``CommandContext``).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from typing import Any

from slurm_sync.commands import EXIT_FAILED, EXIT_OK, CommandContext

__all__ = ["NVIDIA_SMI_QUERY", "accelerators_block", "add_commands",
           "discover_accelerators_command"]


def add_commands(commands: Any) -> None:
    """``clustercockpit discover-accelerators`` under the CLI's subparsers ``commands``."""
    mine = commands.add_parser("clustercockpit", help="ClusterCockpit helpers")
    sub = mine.add_subparsers(dest="cc_command", metavar="COMMAND", required=True)
    sub.add_parser(
        "discover-accelerators",
        help="print this node's 'accelerators' block (gres index -> PCI bus id) from "
             "nvidia-smi").set_defaults(handler=discover_accelerators_command)


NVIDIA_SMI_QUERY = ["--query-gpu=index,pci.bus_id", "--format=csv,noheader"]


def accelerators_block(hostname: str, nvidia_smi_csv: str) -> dict[str, Any]:
    """`accelerators_block("gpu1", "0, 00000000:03:00.0\\n")` is the config block for that host:
    ``{"accelerators": {"gpu1": {"0": "00000000:03:00.0"}}}``. A line that is not
    ``index, bus id`` is a ValueError naming it."""
    table: dict[str, str] = {}
    for number, line in enumerate(nvidia_smi_csv.splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1]:
            raise ValueError(f"nvidia-smi line {number} is not 'index, pci.bus_id': {line!r}")
        table[parts[0]] = parts[1]
    if not table:
        raise ValueError("nvidia-smi listed no GPU")
    return {"accelerators": {hostname: table}}


def discover_accelerators_command(ctx: CommandContext) -> int:
    """``slurm-sync clustercockpit discover-accelerators``: print the accelerators block of
    this node; needs no config and changes nothing."""
    out, err = ctx.out, ctx.err
    smi = shutil.which("nvidia-smi")
    if smi is None:
        err.print("nvidia-smi is not on PATH: this node has no NVIDIA driver tools, so there is "
                  "nothing to discover here (run this on a GPU node).", highlight=False)
        return EXIT_FAILED
    try:
        done = subprocess.run([smi, *NVIDIA_SMI_QUERY], capture_output=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        err.print(f"nvidia-smi did not run: {exc}", highlight=False, markup=False)
        return EXIT_FAILED
    if done.returncode != 0:
        first = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        err.print(f"nvidia-smi failed (exit {done.returncode}): {first[0] if first else ''}",
                  highlight=False, markup=False)
        return EXIT_FAILED
    try:
        block = accelerators_block(socket.gethostname().split(".")[0],
                                   done.stdout.decode(errors="replace"))
    except ValueError as exc:
        err.print(str(exc), highlight=False, markup=False)
        return EXIT_FAILED
    out.print_json(json.dumps(block))
    return EXIT_OK
