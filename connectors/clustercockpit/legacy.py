"""cc-slurm-sync's config.json, accepted as it is, so a site switches by changing the command.

    {"clustername": "fritz",
     "slurm": {"squeue": "/usr/bin/squeue", "sacct": "/usr/bin/sacct",
               "state_save_location": "/var/spool/slurm/ctld"},
     "cc-backend": {"host": "https://cc.example.org", "apikey": "<JWT>"},
     "accelerators": {"f01": {"0": "00000000:03:00.0"}}, "node_regex": "^f[0-9]+$"}

becomes our form, with the API token read from that same file (``token_json_key``), so the key
is never copied anywhere. The caller warns and shows the new form, with the token moved to a
file of its own.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from slurm_sync.config import AdaptedConfig
from slurm_sync.errors import ConfigError

__all__ = ["adapt_config", "from_cc_slurm_sync", "is_cc_slurm_sync"]

_COMMANDS = ("squeue", "sacct", "scontrol")


def is_cc_slurm_sync(data: object) -> bool:
    """`is_cc_slurm_sync(d)`: the document is cc-slurm-sync's (``clustername`` and
    ``cc-backend`` at the top), not ours."""
    return isinstance(data, Mapping) and "clustername" in data and "cc-backend" in data


def adapt_config(data: Mapping[str, Any], path: str) -> AdaptedConfig | None:
    """cc-slurm-sync's config.json read from ``path`` as slurm-sync's, with the form to write
    instead; None when ``data`` is not cc-slurm-sync's (``Connector.adapt_config``)."""
    if not is_cc_slurm_sync(data):
        return None
    run, suggested = from_cc_slurm_sync(data, path)
    return AdaptedConfig(run, suggested, "this is cc-slurm-sync's config; it works as it "
                         "is, but the API token should move to a file of its own "
                         "(chmod 600).")


def from_cc_slurm_sync(data: Mapping[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the config to run with, the config to write instead) for cc-slurm-sync's ``data``
    read from ``path``. Keys we do not know are left for validation to name; a section that is
    not an object is a ConfigError naming it."""
    for key in ("slurm", "cc-backend"):
        section = data.get(key)
        if section is not None and not isinstance(section, Mapping):
            raise ConfigError(
                f"invalid configuration:\n  {path}: $.{key}: expected an object (cc-slurm-sync's "
                f'"{key}" section), got {type(section).__name__} {_shown(section)}')
    slurm = dict(data.get("slurm") or {})
    backend = dict(data.get("cc-backend") or {})
    commands = {name: slurm.pop(name) for name in _COMMANDS if name in slurm}
    new_slurm: dict[str, Any] = {}
    if commands:
        new_slurm["commands"] = commands
    if "state_save_location" in slurm:
        new_slurm["state_save_location"] = slurm.pop("state_save_location")
    # No api_version: cc-slurm-sync speaks 1.4 only (it sends ``exclusive``), but a site may
    # switch because its cc-backend moved to 1.5, so the connector asks cc-backend which it is.
    cockpit: dict[str, Any] = {"cluster": data["clustername"]}
    if "host" in backend:
        cockpit["url"] = backend.pop("host")
    for key in ("accelerators", "node_regex"):
        if key in data:
            cockpit[key] = data[key]
    run: dict[str, Any] = {"connectors": {"clustercockpit": cockpit}}
    if new_slurm:
        run["slurm"] = new_slurm
    leftover = {k: v for k, v in data.items()
                if k not in ("clustername", "slurm", "cc-backend", "accelerators", "node_regex")}
    run.update(leftover)  # unknown keys reach validation, which names them
    if slurm:
        run.setdefault("slurm", {}).update(slurm)
    suggested = copy.deepcopy(run)
    if "apikey" in backend:
        backend.pop("apikey")
        cockpit["token"] = {"file": path}
        cockpit["token_json_key"] = "cc-backend.apikey"
        suggested["connectors"]["clustercockpit"]["token"] = {
            "file": "/etc/slurm-sync/cc-token"}
    if backend:
        cockpit.update(backend)  # unknown cc-backend keys: validation names them
    return run, suggested


def _shown(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return f"of {len(value)} items"
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
