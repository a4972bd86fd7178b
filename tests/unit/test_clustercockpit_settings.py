"""The ClusterCockpit connector's settings: read once, every default in ``Settings``, and the
schema and the docs saying the same."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.connectors.clustercockpit import SCHEMA, Settings
from slurm_sync.connectors.clustercockpit.settings import defaults
from slurm_sync.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "clustercockpit.md"
TOKEN = {"file": "/etc/slurm-sync/cc-token"}


def test_a_key_left_out_takes_its_default_from_settings() -> None:
    settings = Settings.parse({"url": "https://cc.example.org", "token": TOKEN})
    assert (settings.job_script, settings.environment, settings.reconcile) == (
        True, False, "first_run")
    assert (settings.timeout, settings.retries, settings.page_size) == (30.0, 2, 1000)
    assert settings.api_version is None and settings.cluster is None
    assert settings.verify is True


def test_given_keys_are_kept_and_tls_is_read_once() -> None:
    settings = Settings.parse({"url": "https://cc", "token": TOKEN, "timeout": 5,
                               "ca_bundle": "/etc/ca.pem", "node_regex": "^g",
                               "reconcile": "never"})
    assert settings.timeout == 5.0 and isinstance(settings.timeout, float)
    assert settings.verify == "/etc/ca.pem" and settings.reconcile == "never"
    assert settings.hosts.keeps("g1") and not settings.hosts.keeps("f1")
    assert Settings.parse({"url": "https://cc", "token": TOKEN, "verify_tls": False,
                           "ca_bundle": "/etc/ca.pem"}).verify is False


def test_a_bad_regex_names_its_key() -> None:
    with pytest.raises(ConfigError, match=r"clustercockpit\.subclusters\['\('\]"):
        Settings.parse({"url": "https://cc", "token": TOKEN, "subclusters": {"(": "x"}})


def test_the_schema_defaults_are_the_settings_defaults() -> None:
    listed = {k: v["default"] for k, v in SCHEMA["properties"].items() if "default" in v}
    assert listed == defaults()
    assert set(defaults()) <= set(SCHEMA["properties"])


def _docs_defaults() -> dict[str, str]:
    """{key: default cell} of the docs' settings table; a row of several keys has as many
    defaults, comma-separated."""
    found: dict[str, str] = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`(\w+)`", cells[0])
        values = [v.strip() for v in cells[1].split(",")]
        if len(keys) == len(values):
            found.update(zip(keys, values))
    return found


def _value(cell: str) -> Any:
    text = cell.strip("`")
    try:
        return json.loads(text)
    except ValueError:
        return text


def test_the_docs_table_says_the_settings_defaults() -> None:
    documented = _docs_defaults()
    for key, default in defaults().items():
        assert key in documented, f"docs/clustercockpit.md has no row for {key}"
        assert _value(documented[key]) == default, (key, documented[key], default)
