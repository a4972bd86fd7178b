"""A config error names the JSON path, the bad value and what was expected."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.config import (
    CORE_SCHEMA,
    Config,
    ConnectorSettings,
    combined_schema,
    config_from_dict,
    default_state_dir,
    load_config,
)
from slurm_sync.errors import ConfigError
from slurm_sync.secrets import SECRET_REF_SCHEMA

SENTINEL = "s3ntinel-Zq8x-DO-NOT-LEAK"


def test_valid_config(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"cluster": "c1", "slurm": {
        "bin_dir": "/opt/slurm/bin", "timeout": 30, "state_save_location": "/var/spool/s"}}))
    config = load_config(str(path))
    assert config.cluster == "c1"
    assert config.slurm.commands.argv("squeue", []) == ["/opt/slurm/bin/squeue"]
    assert config.slurm.commands.timeout == 30
    assert config.slurm.state_save_location == "/var/spool/s"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"slurm": {"timeout": -1}}, r"\$\.slurm\.timeout: -1 is less than or equal"),
        ({"slurm": {"commands": {"squeu": "/x"}}}, r"\$\.slurm\.commands: 'squeu' is not one of"),
        ({"slurmm": {}}, r"\$\.slurmm: unknown key 'slurmm'; did you mean 'slurm'\?"),
        ({"cluster": 5}, r"\$\.cluster: 5 is not of type 'string'"),
    ],
)
def test_errors_name_path_and_value(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data, "config.json")


def test_broken_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"cluster": "c1",\n "slurm": }')
    with pytest.raises(ConfigError, match="line 2 column"):
        load_config(str(path))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("/nonexistent/config.json")


def test_the_shipped_example_is_valid() -> None:
    """The example loads against the installed connectors' own schemas (the document alone:
    the folders it names need not exist on this machine)."""
    from slurm_sync.connector import discover

    example = Path(__file__).resolve().parents[2] / "config.json.example"
    config = load_config(str(example),
                         fragments={n: dict(c.schema) for n, c in discover().items()},
                         files=False)
    assert not config.connectors["clustercockpit"].enabled
    assert config.cluster and config.slurm.state_save_location
    assert config.connectors["events"].enabled
    assert config.connectors["events"].settings == {"output": "/var/log/slurm-sync/events.jsonl"}


# ------------------------------------------------------------------------- core keys


def test_core_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every core key has a default; an empty config is valid."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    config = config_from_dict({})
    assert config.state_dir == "/var/lib/slurm-sync"
    assert config.stop_guard_share == 0.5
    assert config.sacct_overlap_seconds == 60
    assert config.first_window_seconds == 3600
    assert config.log_format == "text"
    assert config.metrics_file is None
    assert dict(config.connectors) == {}


def test_core_keys_are_read() -> None:
    """Every core key set in the file reaches the Config."""
    config = config_from_dict({
        "state_dir": "/srv/slurm-sync", "stop_guard_share": 1, "sacct_overlap_seconds": 0,
        "first_window_seconds": 86400, "log_format": "json",
        "metrics_file": "/var/lib/node-exporter/slurm-sync.prom"})
    assert config.state_dir == "/srv/slurm-sync"
    assert config.stop_guard_share == 1.0 and isinstance(config.stop_guard_share, float)
    assert config.sacct_overlap_seconds == 0
    assert config.first_window_seconds == 86400
    assert config.log_format == "json"
    assert config.metrics_file == "/var/lib/node-exporter/slurm-sync.prom"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stop_guard_share": 0}, r"\$\.stop_guard_share: 0 is less than or equal to the minimum"),
        ({"stop_guard_share": 1.5}, r"\$\.stop_guard_share: 1\.5 is greater than the maximum"),
        ({"stop_guard_share": True}, r"\$\.stop_guard_share: True is not of type 'number'"),
        ({"sacct_overlap_seconds": -1}, r"\$\.sacct_overlap_seconds: -1 is less than the minimum"),
        ({"sacct_overlap_seconds": 1.5}, r"\$\.sacct_overlap_seconds: 1\.5 is not of type 'integ"),
        ({"first_window_seconds": 0}, r"\$\.first_window_seconds: 0 is less than or equal"),
        ({"retention_days": 0.5}, r"\$\.retention_days: 0\.5 is less than the minimum of 1"),
        ({"log_format": "xml"}, r"\$\.log_format: 'xml' is not one of \['text', 'json'\]"),
        ({"state_dir": "state"}, r"\$\.state_dir: 'state' does not match .* an absolute path"),
        ({"metrics_file": 3}, r"\$\.metrics_file: 3 is not of type 'string'"),
    ],
)
def test_core_key_errors(data: dict[str, object], message: str) -> None:
    """Each new core key names its path, the bad value and what was expected."""
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data, "config.json")


def test_state_dir_default_for_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root gets /var/lib/slurm-sync, whatever XDG_STATE_HOME says."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("XDG_STATE_HOME", "/home/x/.state")
    assert default_state_dir() == "/var/lib/slurm-sync"
    assert config_from_dict({}).state_dir == "/var/lib/slurm-sync"
    assert Config().state_dir == "/var/lib/slurm-sync"


def test_state_dir_default_for_a_user_with_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user gets $XDG_STATE_HOME/slurm-sync."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", "/home/alice/.state")
    assert config_from_dict({}).state_dir == "/home/alice/.state/slurm-sync"


@pytest.mark.parametrize("xdg", [None, "", "relative/state"])
def test_state_dir_default_for_a_user_without_xdg(
    monkeypatch: pytest.MonkeyPatch, xdg: str | None
) -> None:
    """Without XDG_STATE_HOME (or with an empty or relative one): ~/.local/state/slurm-sync."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", "/home/alice")
    if xdg is None:
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_STATE_HOME", xdg)
    assert load_config(None).state_dir == "/home/alice/.local/state/slurm-sync"


def test_state_dir_from_config_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """A state_dir in the file is used as it is, for root and users."""
    for euid in (0, 1000):
        monkeypatch.setattr(os, "geteuid", lambda euid=euid: euid)
        assert config_from_dict({"state_dir": "/srv/s"}).state_dir == "/srv/s"


# ------------------------------------------------------------------------- connectors

EVENTS = {"type": "object", "properties": {"enabled": {"type": "boolean"},
          "output": {"type": "string"}}, "additionalProperties": False}
COCKPIT = {
    "type": "object",
    "properties": {
        "url": {"type": "string", "pattern": "^https?://"},
        "token": SECRET_REF_SCHEMA,
        "timeout": {"type": "number", "exclusiveMinimum": 0},
        "clusters": {"type": "array", "items": {"type": "string"}},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["url", "token"],
    "additionalProperties": False,
}
FRAGMENTS = {"events": EVENTS, "clustercockpit": COCKPIT}
COCKPIT_OK = {"url": "https://cc.example.org", "token": {"file": "/etc/slurm-sync/cc-token"}}


def test_connector_settings() -> None:
    """Each entry becomes a read-only ConnectorSettings; enabled defaults to true."""
    config = config_from_dict({"connectors": {
        "events": {"output": "-"},
        "clustercockpit": {**COCKPIT_OK, "enabled": False, "clusters": ["a"], "tags": {"k": "v"}},
    }}, fragments=FRAGMENTS)
    assert list(config.connectors) == ["events", "clustercockpit"]
    events = config.connectors["events"]
    assert events == ConnectorSettings(name="events", enabled=True, settings={"output": "-"})
    cockpit = config.connectors["clustercockpit"]
    assert cockpit.enabled is False
    assert "enabled" not in cockpit.settings
    assert cockpit.settings["token"]["file"] == "/etc/slurm-sync/cc-token"
    assert cockpit.settings["clusters"] == ("a",)
    with pytest.raises(TypeError):
        cockpit.settings["url"] = "https://elsewhere"  # type: ignore[index]
    with pytest.raises(TypeError):
        cockpit.settings["tags"]["k"] = "w"
    with pytest.raises(TypeError):
        config.connectors["x"] = events  # type: ignore[index]


def test_enabled_is_allowed_when_the_fragment_does_not_list_it() -> None:
    """A fragment that closes its properties need not declare enabled."""
    fragment = {"type": "object", "properties": {"output": {"type": "string"}},
                "additionalProperties": False}
    config = config_from_dict({"connectors": {"events": {"enabled": False, "output": "-"}}},
                              fragments={"events": fragment})
    assert config.connectors["events"].enabled is False


def test_enabled_must_be_a_boolean() -> None:
    """enabled is a boolean even when a fragment says nothing of it."""
    with pytest.raises(ConfigError, match=r"\$\.connectors\.events\.enabled: 'yes' is not of "
                                          r"type 'boolean'"):
        config_from_dict({"connectors": {"events": {"enabled": "yes"}}},
                         fragments={"events": {"type": "object"}})


def test_unknown_connector() -> None:
    """A connector with no known fragment is named, with the known ones."""
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"connectors": {"events": {}, "bank": {"enabled": False}}},
                         "config.json", fragments=FRAGMENTS)
    assert str(caught.value) == (
        "invalid configuration:\n  config.json: $.connectors.bank: unknown connector 'bank'; "
        "known: clustercockpit, events"
    )


def test_unknown_connector_when_none_is_known() -> None:
    """An empty mapping of fragments means no connector is known."""
    with pytest.raises(ConfigError, match="unknown connector 'events'; known: none"):
        config_from_dict({"connectors": {"events": {}}}, fragments={})


def test_without_fragments_connectors_are_checked_for_shape_only() -> None:
    """fragments=None (commands that run no connector): any name, but still objects with a
    boolean enabled."""
    config = config_from_dict({"connectors": {"anything": {"x": 1}}})
    assert config.connectors["anything"].settings == {"x": 1}
    with pytest.raises(ConfigError, match=r"\$\.connectors\.anything\.enabled: 1 is not of"):
        config_from_dict({"connectors": {"anything": {"enabled": 1}}})
    with pytest.raises(ConfigError, match=r"\$\.connectors\.anything: 'on' is not of type"):
        config_from_dict({"connectors": {"anything": "on"}})


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({**COCKPIT_OK, "url": 5}, r"\$\.connectors\.clustercockpit\.url: 5 is not of type "
                                   r"'string'"),
        ({**COCKPIT_OK, "url": "ftp://x"}, r"\$\.connectors\.clustercockpit\.url: 'ftp://x' does "
                                           r"not match '\^https\?://'"),
        ({**COCKPIT_OK, "timeout": 0}, r"\$\.connectors\.clustercockpit\.timeout: 0 is less "
                                       r"than or equal to the minimum of 0"),
        ({**COCKPIT_OK, "clusters": ["a", 2]}, r"\$\.connectors\.clustercockpit\.clusters\[1\]: "
                                               r"2 is not of type 'string'"),
        ({"token": {"env": "T"}}, r"\$\.connectors\.clustercockpit: 'url' is a required "
                                  r"property"),
        ({**COCKPIT_OK, "urll": "x"}, r"\$\.connectors\.clustercockpit\.urll: unknown key "
                                      r"'urll'; did you mean 'url'\?"),
        ({**COCKPIT_OK, "token": {"file": "x"}}, r"\$\.connectors\.clustercockpit\.token: "
                                                 r"\"file\" must be an absolute path"),
    ],
)
def test_fragment_errors_name_the_full_path(settings: dict[str, object], message: str) -> None:
    """Errors inside a connector's settings carry $.connectors.<name>.<key>, value, expectation."""
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"connectors": {"clustercockpit": settings}}, fragments=FRAGMENTS)


def test_fragment_with_its_own_definitions() -> None:
    """A fragment's local $ref (#/$defs/...) resolves within the fragment."""
    fragment = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                "$defs": {"url": {"type": "string", "pattern": "^https://"}},
                "type": "object", "properties": {"url": {"$ref": "#/$defs/url"}}}
    config_from_dict({"connectors": {"x": {"url": "https://a"}}}, fragments={"x": fragment})
    with pytest.raises(ConfigError, match=r"\$\.connectors\.x\.url: 'http://a' does not match"):
        config_from_dict({"connectors": {"x": {"url": "http://a"}}}, fragments={"x": fragment})


def test_invalid_fragment_names_the_connector() -> None:
    """A connector shipping a broken schema is named when a config enables it."""
    with pytest.raises(ConfigError, match="connector 'broken' has an invalid settings schema"):
        config_from_dict({"connectors": {"broken": {}}},
                         fragments={"broken": {"type": "no-such-type"}})


def test_only_the_fragments_of_the_named_connectors_are_read() -> None:
    """Each fragment may load a connector's module: a config reads those it names, and an
    unknown name is still told apart from the installed ones, which the error lists."""
    asked: list[str] = []

    class Lazy(dict):  # type: ignore[type-arg]
        def __getitem__(self, name: str) -> Any:
            asked.append(name)
            return super().__getitem__(name)

    fragments = Lazy(events={"type": "object"}, bank={"type": "no-such-type"})
    config_from_dict({"connectors": {"events": {}}}, fragments=fragments)
    assert asked == ["events"]
    with pytest.raises(ConfigError, match=r"unknown connector 'evnts'.*known: bank, events"):
        config_from_dict({"connectors": {"evnts": {}}}, fragments=fragments)


def test_fragments_are_not_changed() -> None:
    """Building the combined schema copies the fragments."""
    before = json.dumps(FRAGMENTS, sort_keys=True)
    schema = combined_schema(FRAGMENTS)
    assert json.dumps(FRAGMENTS, sort_keys=True) == before
    assert set(schema["properties"]["connectors"]["properties"]) == set(FRAGMENTS)


def test_load_config_passes_fragments(tmp_path: Path) -> None:
    """load_config validates connectors with the fragments it is given."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"connectors": {"events": {"output": 5}}}))
    with pytest.raises(ConfigError, match=rf"{path}: \$\.connectors\.events\.output: 5 is not"):
        load_config(str(path), fragments={"events": EVENTS})


# ------------------------------------------------------------------------- secrets in config


def _secret_config(value: object) -> dict[str, object]:
    return {"connectors": {"clustercockpit": {**COCKPIT_OK, "token": value}}}


def test_literal_secret_in_config_is_refused_without_echo() -> None:
    """A string where a secret reference belongs: says file or env, never shows the string."""
    with pytest.raises(ConfigError) as caught:
        config_from_dict(_secret_config(SENTINEL), "config.json", fragments=FRAGMENTS)
    message = str(caught.value)
    assert "$.connectors.clustercockpit.token: a secret is never written" in message
    assert '{"file": ' in message and '{"env": ' in message
    assert SENTINEL not in message and SENTINEL not in repr(caught.value)
    assert caught.value.__cause__ is None


@pytest.mark.parametrize(
    "fragment_token",
    [
        {"anyOf": [SECRET_REF_SCHEMA, {"type": "null"}]},
        {"oneOf": [SECRET_REF_SCHEMA, {"type": "integer"}]},
        {"allOf": [SECRET_REF_SCHEMA]},
        {"$ref": "#/$defs/secret"},
    ],
)
def test_wrapped_secret_schema_still_hides_the_value(fragment_token: dict[str, object]) -> None:
    """However a fragment wraps SECRET_REF_SCHEMA, the value is not shown."""
    fragment = {"$defs": {"secret": SECRET_REF_SCHEMA}, "type": "object",
                "properties": {"token": fragment_token}}
    for value in (SENTINEL, {"file": SENTINEL}, {"env": SENTINEL}, [SENTINEL]):
        with pytest.raises(ConfigError) as caught:
            config_from_dict({"connectors": {"x": {"token": value}}}, fragments={"x": fragment})
        assert "$.connectors.x.token: " in str(caught.value)
        assert SENTINEL not in str(caught.value)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"token": {"file": "/a"}, "other": SENTINEL}, {"maxProperties": 1}),
        ({"token": SENTINEL}, {"not": {"required": ["token"]}}),
        ({"token": SENTINEL}, {"enum": [{}]}),
        ({"token": SENTINEL}, {"type": "array"}),
    ],
)
def test_objects_are_described_not_dumped(data: dict[str, object], fragment: object) -> None:
    """An error about a whole object lists its keys, never its values."""
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"connectors": {"x": data}}, fragments={"x": fragment})  # type: ignore[dict-item]
    assert "an object with keys (" in str(caught.value)
    assert SENTINEL not in str(caught.value)


def test_unknown_connector_settings_are_not_shown() -> None:
    """The settings of an unknown connector are not echoed either."""
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"connectors": {"bank": {"token": SENTINEL}}}, fragments=FRAGMENTS)
    assert SENTINEL not in str(caught.value)


# ------------------------------------------------------------------------- many errors


def test_errors_are_reported_together() -> None:
    """Core and fragment errors come in one message, sorted by path."""
    data = {"log_format": "xml", "slurm": {"timeout": 0}, "connectors": {
        "events": {"output": 1}, "bank": {}, "clustercockpit": {**COCKPIT_OK, "token": SENTINEL}}}
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, "config.json", fragments=FRAGMENTS)
    lines = str(caught.value).splitlines()
    assert lines[0] == "invalid configuration, 5 errors:"
    assert [line.split(": ")[1] for line in lines[1:]] == [
        "$.connectors.bank",
        "$.connectors.clustercockpit.token",
        "$.connectors.events.output",
        "$.log_format",
        "$.slurm.timeout",
    ]
    assert SENTINEL not in str(caught.value)


def test_at_most_ten_errors_are_shown() -> None:
    """Past ten errors, the message says how many more there are."""
    data = {"connectors": {"events": {"enabled": True}, **{f"c{i:02}": {} for i in range(13)}}}
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, fragments={"events": EVENTS})
    lines = str(caught.value).splitlines()
    assert lines[0] == "invalid configuration, 13 errors:"
    assert len(lines) == 1 + 10 + 1
    assert lines[-1] == "  ... and 3 more errors"
    assert "$.connectors.c00: unknown connector 'c00'" in lines[1]


def test_same_error_twice_is_shown_once() -> None:
    """A value failing the same way under two schemas gives one line."""
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"connectors": {"events": "yes"}}, fragments={"events": EVENTS})
    assert str(caught.value).count("'yes' is not of type 'object'") == 1


# ------------------------------------------------------------------------- the shipped files

EXAMPLE = Path(__file__).resolve().parents[2] / "config.json.example"
DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _keys(schema: dict[str, object], prefix: str = "") -> list[str]:
    properties = schema.get("properties", {})
    assert isinstance(properties, dict)
    keys = []
    for key, sub in properties.items():
        keys.append(prefix + key)
        if isinstance(sub, dict) and "properties" in sub and key != "connectors":
            keys += _keys(sub, prefix + key + ".")
    return keys


def test_the_example_shows_every_key() -> None:
    """config.json.example sets every core key (so it shows realistic values for all)."""
    data = json.loads(EXAMPLE.read_text())
    for key in _keys(CORE_SCHEMA):
        node: object = data
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key} missing from the example"
            node = node[part]


def test_the_doc_describes_every_key() -> None:
    """docs/configuration.md has a heading or row for every core key."""
    doc = DOC.read_text()
    for key in _keys(CORE_SCHEMA):
        assert f"`{key}`" in doc, f"{key} missing from docs/configuration.md"


def test_every_connector_takes_a_concurrency() -> None:
    """concurrency belongs to the core, is kept in the connector's settings, and is bounded."""
    fragment = {"type": "object", "properties": {"output": {"type": "string"}},
                "additionalProperties": False}
    config = config_from_dict({"connectors": {"events": {"concurrency": 8, "output": "-"}}},
                              fragments={"events": fragment})
    assert config.connectors["events"].settings["concurrency"] == 8
    with pytest.raises(ConfigError, match=r"\$\.connectors\.events\.concurrency: 0 is less than "
                                          r"the minimum of 1"):
        config_from_dict({"connectors": {"events": {"concurrency": 0}}},
                         fragments={"events": fragment})


def test_retry_waits_are_read_and_must_be_ordered() -> None:
    config = config_from_dict({"retry_base_seconds": 5, "retry_max_seconds": 60})
    assert (config.retry_base_seconds, config.retry_max_seconds) == (5.0, 60.0)
    with pytest.raises(ConfigError, match=r"\$\.retry_base_seconds: 90 is more than "
                                          r"retry_max_seconds \(60\)"):
        config_from_dict({"retry_base_seconds": 90, "retry_max_seconds": 60})
