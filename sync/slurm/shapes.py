"""Coercers that read one Slurm JSON value whatever version printed it.

    >>> slurm_int({"set": True, "infinite": False, "number": 4})
    4
    >>> slurm_int(4294967294) is None          # NO_VAL in 22.05's plain integers
    True
    >>> slurm_words(["RUNNING", "COMPLETING"]), slurm_words("RUNNING")
    (('RUNNING', 'COMPLETING'), ('RUNNING',))

Slurm's ``--json`` output changed shape across releases; each coercer's docstring lists the
layouts seen from openapi v0.0.37 (21.08) to data_parser v0.0.45 (26.05). A value of a layout
none of them knows raises ``SlurmFormatError`` naming the field. This module and ``parse.py`` are
the only places that know these shapes.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TypeVar

from slurm_sync.errors import SlurmFormatError

T = TypeVar("T")
R = TypeVar("R")

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_EPOCH",
    "ascii_digits",
    "cached_with_field",
    "parse_tres_list",
    "parse_tres_string",
    "slurm_bool",
    "slurm_int",
    "slurm_number_object",
    "slurm_str",
    "slurm_time",
    "slurm_words",
]

# Slurm's "no value" and "infinite" sentinels for 32- and 64-bit fields (slurm.h NO_VAL etc.).
_SENTINELS = frozenset({0xFFFFFFFE, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF})
_SENTINELS16 = frozenset({0xFFFE, 0xFFFF})

# Every number read is bounded: what SQLite and the services store (signed 64 bits), and times a
# calendar can show. A value outside is a broken producer's, and its record is skipped.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
MAX_EPOCH = 253402300799  # 9999-12-31 23:59:59 UTC, the last second datetime can show
_OUT_OF_RANGE = "a number beyond 64 bits"


def slurm_number_object(value: Mapping[str, object], field: str) -> int | None:
    """Read data_parser's ``{"set": bool, "infinite": bool, "number": int}`` (v0.0.39 and later).

    ``set=false`` and ``infinite=true`` are None; a float number is truncated.
    """
    if not value.get("set", True) or value.get("infinite", False):
        return None
    number = value.get("number")
    if number is None:
        return None
    return _plain_int(number, field)


def ascii_digits(text: str, most: int = 19) -> bool:
    """`ascii_digits(s)`: ``s`` is 1 to ``most`` ASCII digits (``str.isdigit`` also accepts
    "²" and "٣", which ``int`` refuses or reads as another number)."""
    return text.isascii() and text.isdigit() and len(text) <= most


def _plain_int(value: object, field: str) -> int:
    if isinstance(value, bool):
        raise SlurmFormatError(field, value, "expected a number, got a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise SlurmFormatError(field, value, "expected a finite number")
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not ascii_digits(text[1:] if text[:1] == "-" else text, 20):
            raise SlurmFormatError(field, value, "expected a number")
        number = int(text)
    else:
        raise SlurmFormatError(field, value, "expected a number")
    if not INT_MIN <= number <= INT_MAX:
        raise SlurmFormatError(field, value, _OUT_OF_RANGE)
    return number


def slurm_int(value: object, field: str = "", *, bits: int = 32) -> int | None:
    """A count or id, None when Slurm says "not set" or "infinite".

    Layouts: a plain int (v0.0.37/38, with NO_VAL/INFINITE sentinels), ``null``, a numeric
    string (cc-slurm-adapter saw these in TRES), ``{set, infinite, number}`` (v0.0.39+), and
    "+complex" dumps (v0.0.41+): ``null`` or ``"Infinity"``. ``bits=16`` also treats 65534/65535
    as unset, for Slurm's 16-bit fields.
    """
    kind = type(value)
    if kind is int:  # the common case, checked first: this runs for every field of every job
        if value in _SENTINELS or (bits == 16 and value in _SENTINELS16):
            return None
        if INT_MIN <= value <= INT_MAX:  # type: ignore[operator]
            return value  # type: ignore[return-value]
        raise SlurmFormatError(field, value, _OUT_OF_RANGE)
    if kind is dict:
        if not value.get("set", True) or value.get("infinite", False):  # type: ignore[attr-defined]
            return None
        number = value.get("number")  # type: ignore[attr-defined]
        if type(number) is int and INT_MIN <= number <= INT_MAX:
            return number
        return None if number is None else _plain_int(number, field)
    if value is None:
        return None
    if isinstance(value, Mapping):
        return slurm_number_object(value, field)
    if isinstance(value, str) and value.strip().lower() in {"infinity", "unlimited", ""}:
        return None
    number = _plain_int(value, field)
    if number in _SENTINELS or (bits == 16 and number in _SENTINELS16):
        return None
    return number


def slurm_time(value: object, field: str = "") -> int | None:
    """An epoch time in seconds, None when unset.

    Layouts: a plain int (v0.0.37/38; all sacct ``time.*`` in every version), ``{set, infinite,
    number}`` (squeue v0.0.40+), ``null``. Slurm writes 0 for "not yet" (a pending job's start).
    A time after the year 9999 is no time at all (nothing can show it) and raises.
    """
    number = slurm_int(value, field)
    if number is None or number <= 0:
        return None
    if number > MAX_EPOCH:
        raise SlurmFormatError(field, value, "a time after the year 9999")
    return number


def slurm_words(value: object, field: str = "") -> tuple[str, ...]:
    """A list of words such as a state and its flags.

    Layouts: a string (``"RUNNING"``, v0.0.37 to v0.0.39), a comma-separated string, a list of
    strings (``["PENDING", "REQUEUED"]``, v0.0.40+), ``null`` (no words).
    """
    if type(value) is list and len(value) == 1 and type(value[0]) is str:
        return (value[0],)
    if value is None:
        return ()
    if isinstance(value, str):
        if "," not in value:
            return (value,) if value else ()
        return tuple(w.strip() for w in value.split(",") if w.strip())
    if isinstance(value, list) and all(isinstance(w, str) for w in value):
        return tuple(w for w in value if w)
    raise SlurmFormatError(field, value, "expected a string or a list of strings")


def slurm_str(value: object, field: str = "") -> str:
    """A text value, "" when absent.

    Layouts: a string, ``null``, a one-element list of strings (some v0.0.40+ fields), a number
    (ids printed as strings in some versions).
    """
    if type(value) is str:
        return value
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(w, str) for w in value):
        return ",".join(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise SlurmFormatError(field, value, "expected a string")


def slurm_bool(value: object, field: str = "") -> bool | None:
    """A flag: true/false, 0/1, ``"true"``/``"false"``, ``["true"]``; None when absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    words = slurm_words(value, field)
    if not words:
        return None
    word = words[0].lower()
    if word in {"true", "yes", "1"}:
        return True
    if word in {"false", "no", "0"}:
        return False
    raise SlurmFormatError(field, value, "expected true or false")


_MEM_MB = {"M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}
_MEM_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}


_TRES_COUNT = re.compile(r"([0-9]{1,19}(?:\.[0-9]{1,19})?)([KMGTP]?)")


def _tres_value(key: str, raw: str, field: str) -> int:
    if ascii_digits(raw):
        count = int(raw)
    elif raw[-1:] in _MEM_MB and ascii_digits(raw[:-1]):
        count = int(raw[:-1]) * _MEM_MB[raw[-1]]
    else:
        match = _TRES_COUNT.fullmatch(raw.strip())
        if not match:
            raise SlurmFormatError(field, raw, f"TRES {key!r} is not a count")
        number, unit = float(match.group(1)), match.group(2)
        if unit:
            number *= _MEM_UNITS[unit]
        count = round(number)
    if count > INT_MAX:
        raise SlurmFormatError(field, raw, f"TRES {key!r} is {_OUT_OF_RANGE}")
    return count


def parse_tres_string(value: object, field: str = "") -> Mapping[str, int]:
    """``"cpu=2,mem=500M,node=1,gres/gpu=2"`` -> ``{"cpu": 2, "mem": 500, ...}`` (read-only).

    Memory is in MB. squeue's ``tres_req_str``/``tres_alloc_str`` in every version. Jobs of one
    shape share their TRES strings, so parsed strings are cached and shared.
    """
    text = slurm_str(value, field)
    # long strings are not cached: the cache would keep a broken producer's megabytes alive
    parse = _tres_cached if len(text) <= _CACHED_LENGTH else _tres_parse
    return cached_with_field(parse, text, field)


def cached_with_field(parse: Callable[[T], R], key: T, field: str) -> R:
    """`cached_with_field(f, key, field)` calls a cached parser ``f`` (whose errors cannot name
    the caller's field, being shared) and re-raises its error under ``field``."""
    try:
        return parse(key)
    except SlurmFormatError as exc:
        raise SlurmFormatError(field, key, exc.reason) from None


_CACHED_LENGTH = 1024


def _tres_parse(text: str) -> Mapping[str, int]:
    out: dict[str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, raw = part.partition("=")
        if not sep:
            raise SlurmFormatError("", text, f"TRES entry {part!r} has no '='")
        out[key.strip()] = _tres_value(key, raw, "")
    return MappingProxyType(out)


_tres_cached = functools.lru_cache(maxsize=4096)(_tres_parse)


def parse_tres_list(value: object, field: str = "") -> dict[str, int]:
    """sacct's ``[{"type": "gres", "name": "gpu", "id": 1001, "count": 2}, ...]`` -> dict.

    The key is ``type`` or ``type/name`` as in TRES strings; memory counts are MB already.
    """
    if value is None:
        return {}
    if not isinstance(value, list):
        raise SlurmFormatError(field, value, "expected a list of TRES entries")
    out: dict[str, int] = {}
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise SlurmFormatError(f"{field}[{i}]", item, "expected a TRES object")
        kind = slurm_str(item.get("type"), f"{field}[{i}].type")
        name = slurm_str(item.get("name"), f"{field}[{i}].name")
        count = slurm_int(item.get("count"), f"{field}[{i}].count", bits=64)
        if not kind or count is None:
            continue
        out[f"{kind}/{name}" if name else kind] = count
    return out
