"""Secrets come from files or environment variables, and never show in a message or a repr."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import jsonschema
import pytest

import slurm_sync.secrets
from slurm_sync.errors import ConfigError
from slurm_sync.secrets import (
    SECRET_REF_SCHEMA,
    Secret,
    SecretRef,
    resolve_secret,
    secret_ref_problem,
)

SENTINEL = "s3ntinel-Zq8x-DO-NOT-LEAK"


def _every_text(exc: BaseException) -> str:
    """Every message and repr along an exception's cause and context chain."""
    texts = []
    current: BaseException | None = exc
    while current is not None:
        texts += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


def _secret_file(tmp_path: Path, content: str | bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    path.chmod(mode)
    return path


# ------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("value", "kind", "where"),
    [({"file": "/etc/slurm-sync/token"}, "file", "/etc/slurm-sync/token"),
     ({"env": "CC_TOKEN"}, "env", "CC_TOKEN")],
)
def test_reference_forms(value: dict[str, str], kind: str, where: str) -> None:
    """Both forms parse into a SecretRef and back."""
    ref = SecretRef.from_config(value, key="$.connectors.cc.token")
    assert (ref.kind, ref.where, ref.key) == (kind, where, "$.connectors.cc.token")
    assert ref.to_config() == value
    assert str(ref) == f"{kind} {where}"


def test_literal_secret_is_refused_without_echo() -> None:
    """A plain string is refused, says to use file or env, and never echoes the string."""
    with pytest.raises(ConfigError) as caught:
        SecretRef.from_config(SENTINEL, key="$.connectors.cc.token")
    message = str(caught.value)
    assert message.startswith("$.connectors.cc.token: a secret is never written")
    assert '{"file": ' in message and '{"env": ' in message
    assert SENTINEL not in _every_text(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, "got a number"),
        (None, "got null"),
        ([SENTINEL], "got an array"),
        ({}, "got neither"),
        ({"file": "/x", "env": "X"}, "got both"),
        ({"file": SENTINEL}, '"file" must be an absolute path'),
        ({"file": 5}, '"file" must be an absolute path'),
        ({"env": SENTINEL}, '"env" must be the name of an environment variable'),
        ({"env": "1X"}, '"env" must be the name of an environment variable'),
        ({"file": "/x", SENTINEL: 1}, "found 1 other key"),
    ],
)
def test_bad_references_are_named_not_shown(value: object, expected: str) -> None:
    """Each bad reference says what is wrong, without the value or any key inside it."""
    with pytest.raises(ConfigError, match=expected) as caught:
        SecretRef.from_config(value, key="$.x")
    assert SENTINEL not in _every_text(caught.value)


@pytest.mark.parametrize(
    "value",
    [
        "x", 1, None, [], {}, {"file": "/a"}, {"file": "a"}, {"file": 1}, {"env": "A_1"},
        {"env": "1A"}, {"env": "A-B"}, {"env": ""}, {"file": "/a", "env": "A"},
        {"file": "/a", "x": 1},
    ],
)
def test_schema_and_checker_agree(value: object) -> None:
    """SECRET_REF_SCHEMA accepts exactly what secret_ref_problem accepts."""
    valid = jsonschema.Draft202012Validator(SECRET_REF_SCHEMA).is_valid(value)
    assert valid == (secret_ref_problem(value) is None)


def test_constructed_reference_is_checked() -> None:
    """A SecretRef built by hand is checked like one from config."""
    with pytest.raises(ConfigError, match="absolute path"):
        SecretRef("file", "relative/token")
    with pytest.raises(ConfigError, match="other key"):
        SecretRef("literal", SENTINEL)


# ------------------------------------------------------------------------- from a file


def test_secret_from_file(tmp_path: Path) -> None:
    """The file's content, one trailing newline stripped; repr and str name the file only."""
    path = _secret_file(tmp_path, SENTINEL + "\n")
    secret = resolve_secret(SecretRef("file", str(path)))
    assert secret.reveal() == SENTINEL
    assert secret.warnings == ()
    assert repr(secret) == str(secret) == f"Secret(<from file {path}>)"
    assert f"{secret}" == f"Secret(<from file {path}>)"
    for text in (repr(secret), str(secret), f"{secret!r}", repr([secret]), repr({"t": secret})):
        assert SENTINEL not in text


@pytest.mark.parametrize(
    ("content", "value"),
    [("a\n", "a"), ("a\r\n", "a"), ("a", "a"), ("a b \n", "a b ")],
)
def test_only_one_trailing_newline_is_stripped(tmp_path: Path, content: str, value: str) -> None:
    """One newline (LF or CRLF) is stripped, nothing else."""
    path = _secret_file(tmp_path, content)
    assert resolve_secret(SecretRef("file", str(path))).reveal() == value


@pytest.mark.parametrize("content", ["a\n\n", " a b \n"])
def test_what_is_left_must_fit_an_http_header(tmp_path: Path, content: str) -> None:
    """A second newline is not stripped, and a secret is sent in an HTTP header: a value that
    cannot be one is refused at once (it would fail every request) instead of being sent."""
    path = _secret_file(tmp_path, content)
    with pytest.raises(ConfigError, match=r"control character|white space"):
        resolve_secret(SecretRef("file", str(path)))


@pytest.mark.parametrize(("mode", "shown"), [(0o644, "0644"), (0o640, "0640"), (0o604, "0604")])
def test_file_open_to_others_warns(tmp_path: Path, mode: int, shown: str) -> None:
    """A file readable by group or others is used, with a warning naming it, its mode and chmod."""
    path = _secret_file(tmp_path, SENTINEL, mode)
    secret = resolve_secret(SecretRef("file", str(path)))
    assert secret.reveal() == SENTINEL
    (warning,) = secret.warnings
    assert str(path) in warning and shown in warning and f"chmod 600 {path}" in warning
    assert SENTINEL not in warning


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_file_does_not_warn(tmp_path: Path, mode: int) -> None:
    """Modes 600 and 400 are fine."""
    path = _secret_file(tmp_path, SENTINEL, mode)
    assert resolve_secret(SecretRef("file", str(path))).warnings == ()


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is named, with the config key when the reference has one."""
    path = tmp_path / "nope"
    with pytest.raises(ConfigError) as caught:
        resolve_secret(SecretRef("file", str(path), key="$.connectors.cc.token"))
    assert str(caught.value) == f"$.connectors.cc.token: secret file {path} does not exist"


@pytest.mark.parametrize("content", ["", "\n", "\r\n", "  \n\t\n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    """An empty (or whitespace-only) file is an error naming it."""
    path = _secret_file(tmp_path, content)
    with pytest.raises(ConfigError, match=f"secret file {path} is empty"):
        resolve_secret(SecretRef("file", str(path)))


def test_directory_is_not_a_secret_file(tmp_path: Path) -> None:
    """A directory (or a FIFO, a device) is refused before anything is read."""
    with pytest.raises(ConfigError, match="is not a regular file"):
        resolve_secret(SecretRef("file", str(tmp_path)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    """A file this uid cannot read is named, its content is not."""
    path = _secret_file(tmp_path, SENTINEL, 0o000)
    with pytest.raises(ConfigError, match="is not readable by uid") as caught:
        resolve_secret(SecretRef("file", str(path)))
    assert SENTINEL not in _every_text(caught.value)


def test_unreadable_file_as_any_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, for a run as root: open() refuses as it would for another uid."""
    path = _secret_file(tmp_path, SENTINEL)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(slurm_sync.secrets, "open", refuse, raising=False)
    with pytest.raises(ConfigError, match=f"secret file {path} is not readable by uid"):
        resolve_secret(SecretRef("file", str(path)))


def test_not_utf8_file_shows_no_byte(tmp_path: Path) -> None:
    """Undecodable content is refused, and the decoding error (which holds the bytes) is not
    chained to the ConfigError."""
    path = _secret_file(tmp_path, SENTINEL.encode() + b"\xff\xfe")
    with pytest.raises(ConfigError, match="is not UTF-8 text") as caught:
        resolve_secret(SecretRef("file", str(path)))
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert SENTINEL not in _every_text(caught.value) and "xff" not in str(caught.value)


def test_oversized_file(tmp_path: Path) -> None:
    """More than 1 MiB is not a secret someone meant."""
    path = _secret_file(tmp_path, "x" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        resolve_secret(SecretRef("file", str(path)))


# ------------------------------------------------------------------------- from the environment


def test_secret_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable's value, as it is; repr names the variable only."""
    monkeypatch.setenv("SLURM_SYNC_TEST_TOKEN", SENTINEL)
    secret = resolve_secret(SecretRef("env", "SLURM_SYNC_TEST_TOKEN"))
    assert secret.reveal() == SENTINEL
    assert repr(secret) == str(secret) == "Secret(<from env SLURM_SYNC_TEST_TOKEN>)"
    assert secret.warnings == ()


def test_secret_from_given_environ() -> None:
    """An environment can be passed in instead of os.environ."""
    secret = resolve_secret(SecretRef("env", "TOKEN"), environ={"TOKEN": SENTINEL + " "})
    assert secret.reveal() == SENTINEL + " "


def test_env_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset variable is named."""
    monkeypatch.delenv("SLURM_SYNC_TEST_TOKEN", raising=False)
    with pytest.raises(ConfigError) as caught:
        resolve_secret(SecretRef("env", "SLURM_SYNC_TEST_TOKEN", key="$.connectors.cc.token"))
    assert str(caught.value) == (
        "$.connectors.cc.token: environment variable SLURM_SYNC_TEST_TOKEN is not set"
    )


@pytest.mark.parametrize("value", ["", "  "])
def test_env_empty(value: str) -> None:
    """An empty variable is an error too."""
    with pytest.raises(ConfigError, match="environment variable TOKEN is empty"):
        resolve_secret(SecretRef("env", "TOKEN"), environ={"TOKEN": value})


# ------------------------------------------------------------------------- the Secret itself


def test_secret_is_read_only_and_hides_its_value() -> None:
    """No attribute to overwrite, no __dict__ that vars() could print."""
    secret = Secret(SENTINEL, SecretRef("env", "TOKEN"))
    with pytest.raises(AttributeError):
        secret.source = SecretRef("env", "OTHER")
    with pytest.raises(TypeError):
        vars(secret)
    assert SENTINEL not in repr(secret) + str(secret) + repr(secret.source)


def test_secret_survives_a_pickle_round_trip_without_showing() -> None:
    """Copies (threads, pickles) keep the value and still hide it."""
    secret = Secret(SENTINEL, SecretRef("env", "TOKEN"), ["w"])
    copied = pickle.loads(pickle.dumps(secret))
    assert copied.reveal() == SENTINEL and copied.warnings == ("w",)
    assert SENTINEL not in repr(copied)


def test_a_connector_keeps_the_warnings_of_its_secrets(tmp_path: Path) -> None:
    """A secret file others can read is used, and the connector says so (check, each run)."""
    from slurm_sync.connectors.events import EventsConnector

    token = tmp_path / "token"
    token.write_text("t0ken\n")
    token.chmod(0o644)
    connector = EventsConnector({"output": "-", "token": {"file": str(token)}})
    assert connector.secret("token").reveal() == "t0ken"
    assert len(connector.warnings) == 1 and str(token) in connector.warnings[0]
    assert "t0ken" not in connector.warnings[0]


def test_a_secret_inside_a_section_is_named_by_its_dotted_key(tmp_path: Path) -> None:
    from slurm_sync.connectors.events import EventsConnector
    from slurm_sync.errors import ConfigError

    token = tmp_path / "token"
    token.write_text("bkua\n")
    token.chmod(0o640)
    connector = EventsConnector({"output": "-", "rest": {"token": {"file": str(token)}}})
    assert connector.secret("rest.token").reveal() == "bkua"
    assert connector.warnings and "chmod 600" in connector.warnings[0]
    with pytest.raises(ConfigError, match=r"\$\.connectors\.events\.stacks\.token"):
        connector.secret("stacks.token")
