"""cc-slurm-sync's config.json runs as it is, warns with the new form, and never shows the key."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from slurm_sync.config import load_config
from slurm_sync.connector import discover
from slurm_sync.connectors.clustercockpit import ClusterCockpitConnector
from slurm_sync.errors import ConfigError

ADAPTERS = [ClusterCockpitConnector.adapt_config]
APIKEY = "eyJhbGciOiJFZERTQSJ9.legacy-key-never-shown"
LEGACY = {
    "clustername": "fritz",
    "slurm": {"squeue": "/usr/bin/squeue", "sacct": "/usr/bin/sacct",
              "state_save_location": "/var/spool/slurm/ctld"},
    "cc-backend": {"host": "https://cc.example.org", "apikey": APIKEY},
    "accelerators": {"f01": {"0": "00000000:03:00.0"}},
    "node_regex": "^f[0-9]+$",
}


def _fragments() -> dict[str, dict[str, object]]:
    return {n: dict(c.schema) for n, c in discover().items()}


def test_a_cc_slurm_sync_config_runs_as_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LEGACY))
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        config = load_config(str(path), _fragments(), adapters=ADAPTERS)
    settings = config.connectors["clustercockpit"].settings
    assert settings["url"] == "https://cc.example.org" and settings["cluster"] == "fritz"
    assert settings["node_regex"] == "^f[0-9]+$"
    assert config.slurm.commands.paths["squeue"] == "/usr/bin/squeue"
    assert config.slurm.state_save_location == "/var/spool/slurm/ctld"
    connector = ClusterCockpitConnector(dict(settings))
    assert connector.client.session.headers["X-Auth-Token"] == APIKEY
    assert connector.warnings == []
    # the warning shows the new form, with the token in a file of its own, never the key
    assert "cc-slurm-sync's config" in caplog.text and "/etc/slurm-sync/cc-token" in caplog.text
    assert APIKEY not in caplog.text


def test_a_legacy_config_open_to_others_warns_like_any_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LEGACY))
    path.chmod(0o644)
    config = load_config(str(path), _fragments(), adapters=ADAPTERS)
    connector = ClusterCockpitConnector(dict(config.connectors["clustercockpit"].settings))
    assert any("chmod 600" in w for w in connector.warnings)


def test_a_legacy_config_without_the_key_names_it(tmp_path: Path) -> None:
    data = json.loads(json.dumps(LEGACY))
    data["cc-backend"]["apikey"] = ""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    config = load_config(str(path), _fragments(), adapters=ADAPTERS)
    with pytest.raises(ConfigError, match=r"'cc-backend\.apikey' in the token file is not") as err:
        ClusterCockpitConnector(dict(config.connectors["clustercockpit"].settings))
    assert APIKEY not in str(err.value)


def test_unknown_legacy_keys_are_named(tmp_path: Path) -> None:
    data = {**LEGACY, "colour": "blue"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"\$\.colour: unknown key 'colour'") as err:
        load_config(str(path), _fragments(), adapters=ADAPTERS)
    assert APIKEY not in str(err.value)
