"""Secrets come from a file or an environment variable named in config.json, never from the
config itself, and never show up in a message, a repr or a log.

    >>> ref = SecretRef.from_config({"env": "CC_TOKEN"}, key="$.connectors.cc.token")
    >>> secret = resolve_secret(ref, environ={"CC_TOKEN": "s3cret"})
    >>> secret
    Secret(<from env CC_TOKEN>)
    >>> secret.reveal()
    's3cret'
    >>> SecretRef.from_config("s3cret", key="$.connectors.cc.token")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    slurm_sync.errors.ConfigError: $.connectors.cc.token: a secret is never written ...

In config.json a secret is a reference, ``{"file": "/absolute/path"}`` or ``{"env": "VAR_NAME"}``.
A connector puts :data:`SECRET_REF_SCHEMA` where its settings fragment expects a secret; the
config loader then reports a bad reference without echoing what was written there.

Resolving (:func:`resolve_secret`):

- a file must be a regular file of at most 1 MiB of UTF-8 text; one trailing newline (``\\n`` or
  ``\\r\\n``) is stripped, nothing else. A file that is empty, or only whitespace, is an error.
- an environment variable must be set and not empty (or only whitespace); its value is used as it
  is.
- the value must be text an HTTP header can carry (a secret is sent in one): Latin-1 only, no
  control character, not starting with white space. A value that is a JSON object (a file a
  connector reads a key from, such as cc-slurm-sync's config) is left to that connector, which
  can check the string it takes with :func:`header_problem`.
- a file whose mode gives group or others any access (``mode & 0o077``) is still used, and the
  returned :class:`Secret` carries a warning in ``secret.warnings`` (strings naming the file, its
  mode and ``chmod 600``). Nothing is logged here: the caller shows the warnings (``check``, the
  engine's log).

Every failure is a :class:`~sync.errors.ConfigError` naming the file or the variable (and the
config key when the reference has one), never the content.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slurm_sync.errors import ConfigError

__all__ = [
    "SECRET_REF_KEYWORD",
    "SECRET_REF_SCHEMA",
    "Secret",
    "SecretRef",
    "header_problem",
    "is_secret_ref_schema",
    "resolve_secret",
    "secret_ref_problem",
]

MAX_SECRET_BYTES = 1024 * 1024

ENV_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"
_ENV_NAME = re.compile(ENV_NAME_PATTERN)

SECRET_REF_KEYWORD = "x-slurm-sync-secret-ref"
"""The keyword that marks :data:`SECRET_REF_SCHEMA`; the config loader rewrites any validation
error under a schema carrying it so that the value is never shown."""

SECRET_REF_SCHEMA: dict[str, Any] = {
    SECRET_REF_KEYWORD: True,
    "description": 'A secret reference: {"file": "/absolute/path"} or {"env": "VAR_NAME"}.',
    "type": "object",
    "oneOf": [
        {
            "properties": {"file": {"type": "string", "pattern": "^/"}},
            "required": ["file"],
            "additionalProperties": False,
        },
        {
            "properties": {"env": {"type": "string", "pattern": ENV_NAME_PATTERN}},
            "required": ["env"],
            "additionalProperties": False,
        },
    ],
}
"""JSON Schema of a secret reference, for connectors' settings fragments (used as is, or wrapped,
e.g. ``{"anyOf": [SECRET_REF_SCHEMA, {"type": "null"}]}``). Do not mutate it; copy it first."""

_FORMS = '{"file": "/path/to/file"} or {"env": "VAR_NAME"}'
_NOT_SHOWN = "(the value given is not shown)"


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def secret_ref_problem(value: object) -> str | None:
    """`secret_ref_problem(value)` is None for a valid reference, else what is wrong with it,
    in words that never include the value (nor any key or string inside it)."""
    if isinstance(value, str):
        return (
            "a secret is never written into config.json: put it in a file (mode 600) or an "
            f"environment variable, and write {_FORMS} here {_NOT_SHOWN}"
        )
    if not isinstance(value, Mapping):
        return f"expected a secret reference, {_FORMS}; got {_kind_of(value)} {_NOT_SHOWN}"
    forms = [key for key in ("file", "env") if key in value]
    others = len([key for key in value if key not in ("file", "env")])
    if others:
        return (
            f'a secret reference has one key, "file" or "env"; found {others} other '
            f"key{'s' if others > 1 else ''} {_NOT_SHOWN}"
        )
    if len(forms) != 1:
        got = "both" if forms else "neither"
        return f"a secret reference has exactly one key, {_FORMS}; got {got}"
    kind = forms[0]
    where = value[kind]
    if kind == "file" and not (isinstance(where, str) and where.startswith("/")):
        return f'"file" must be an absolute path (a string starting with /) {_NOT_SHOWN}'
    if kind == "env" and not (isinstance(where, str) and _ENV_NAME.match(where)):
        return (
            '"env" must be the name of an environment variable (letters, digits and _, not '
            f"starting with a digit) {_NOT_SHOWN}"
        )
    return None


def is_secret_ref_schema(schema: object) -> bool:
    """`is_secret_ref_schema(s)` is true when ``s`` is (a copy of) :data:`SECRET_REF_SCHEMA`."""
    return isinstance(schema, Mapping) and schema.get(SECRET_REF_KEYWORD) is True


@dataclass(frozen=True)
class SecretRef:
    """Where a secret is: ``kind`` is ``"file"`` (``where`` an absolute path) or ``"env"``
    (``where`` a variable name). ``key`` is the JSON path of the reference in config.json, used
    in error messages when given. A reference holds no secret, so its repr is safe to print."""

    kind: str
    where: str
    key: str = ""

    def __post_init__(self) -> None:
        problem = secret_ref_problem({self.kind: self.where})
        if problem:
            raise ConfigError(f"{self._context()}{problem}")

    @classmethod
    def from_config(cls, value: object, key: str = "") -> SecretRef:
        """`SecretRef.from_config({"file": "/etc/x"}, key="$.a.b")`; a ConfigError (that never
        echoes ``value``) for a plain string or anything else that is not a reference."""
        problem = secret_ref_problem(value)
        if problem is not None or not isinstance(value, Mapping):
            where = f"{key}: " if key else ""
            raise ConfigError(f"{where}{problem}")
        ((kind, where_),) = value.items()
        return cls(kind=kind, where=where_, key=key)

    def to_config(self) -> dict[str, str]:
        """`ref.to_config()` is the reference as written in config.json."""
        return {self.kind: self.where}

    def __str__(self) -> str:
        return f"{self.kind} {self.where}"

    def _context(self) -> str:
        return f"{self.key}: " if self.key else ""


class Secret:
    """A resolved secret. ``repr``/``str`` say where it came from (``Secret(<from file
    /etc/slurm-sync/token>)``); only :meth:`reveal` gives the value. ``source`` is the
    :class:`SecretRef`, ``warnings`` a tuple of strings (a file open to group or others)."""

    __slots__ = ("_value", "source", "warnings")

    _value: str
    source: SecretRef
    warnings: tuple[str, ...]

    def __init__(self, value: str, source: SecretRef, warnings: Sequence[str] = ()) -> None:
        object.__setattr__(self, "_value", value)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "warnings", tuple(warnings))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Secret is read-only (cannot set {name!r})")

    def __reduce__(self) -> tuple[type[Secret], tuple[str, SecretRef, tuple[str, ...]]]:
        # copy.copy, copy.deepcopy and pickle rebuild it through __init__
        return (Secret, (self._value, self.source, self.warnings))

    def reveal(self) -> str:
        """`secret.reveal()` is the value: pass it straight to where it is needed."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<from {self.source}>)"

    __str__ = __repr__


def resolve_secret(ref: SecretRef, *, environ: Mapping[str, str] | None = None) -> Secret:
    """`resolve_secret(ref)` reads the file or the environment variable (``environ``, default
    ``os.environ``) that ``ref`` names; a ConfigError names what is wrong, never the content."""
    if ref.kind == "file":
        return _from_file(ref)
    env = os.environ if environ is None else environ
    value = env.get(ref.where)
    if value is None:
        raise ConfigError(f"{ref._context()}environment variable {ref.where} is not set")
    if not value.strip():
        raise ConfigError(f"{ref._context()}environment variable {ref.where} is empty")
    _check_usable(value, f"{ref._context()}environment variable {ref.where}")
    return Secret(value, ref)


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def header_problem(value: str) -> str | None:
    """`header_problem(v)` says why ``v`` cannot be sent as an HTTP header value (requests
    refuses it, or http.client cannot encode it), in words that never include ``v``; None when
    it can."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError as exc:
        return (f"holds a character outside Latin-1 (character {exc.start + 1}), which an HTTP "
                "header cannot carry")
    control = _CONTROL.search(value)
    if control is not None:
        return (f"holds a control character (character {control.start() + 1}): a line break "
                "or a second line?")
    if value[:1].isspace():
        return "starts with white space, which an HTTP header cannot carry"
    return None


def _check_usable(value: str, what: str) -> None:
    if value.lstrip().startswith("{"):
        return  # a JSON document a connector takes a key from; it checks that string
    problem = header_problem(value)
    if problem:
        raise ConfigError(f"{what} {problem}: is it the right secret? {_NOT_SHOWN}")


def _from_file(ref: SecretRef) -> Secret:
    path = ref.where
    what = f"{ref._context()}secret file {path}"
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} does not exist") from exc
    except PermissionError as exc:
        raise ConfigError(f"{what} cannot be reached by uid {os.geteuid()}") from exc
    except OSError as exc:
        raise ConfigError(f"{what} cannot be read: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{what} is not a regular file")
    try:
        with open(path, "rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            raw = handle.read(MAX_SECRET_BYTES + 1)
    except PermissionError as exc:
        raise ConfigError(f"{what} is not readable by uid {os.geteuid()}") from exc
    except OSError as exc:
        raise ConfigError(f"{what} cannot be read: {exc.strerror}") from exc
    if len(raw) > MAX_SECRET_BYTES:
        raise ConfigError(f"{what} is larger than 1 MiB: is it the right file?")
    value = _decode(raw)
    # raised outside any except block, so that no decoding error (which holds the bytes) is
    # chained to it
    if value is None:
        raise ConfigError(f"{what} is not UTF-8 text")
    if value.endswith("\r\n"):
        value = value[:-2]
    elif value.endswith("\n"):
        value = value[:-1]
    if not value.strip():
        raise ConfigError(f"{what} is empty")
    _check_usable(value, what)
    warnings: list[str] = []
    if mode & 0o077:
        warnings.append(
            f"secret file {path} has mode {mode:04o}, open to group or others: "
            f"run chmod 600 {path}"
        )
    return Secret(value, ref, warnings)


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
