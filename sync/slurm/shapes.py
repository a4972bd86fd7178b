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

from sync.errors import SlurmFormatError

T = TypeVar("T")
R = TypeVar("R")

__all__ = [
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


def _plain_int(value: object, field: str) -> int:
    if isinstance(value, bool):
        raise SlurmFormatError(field, value, "expected a number, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise SlurmFormatError(field, value, "expected a finite number")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() or (text[:1] == "-" and text[1:].isdigit()):
            return int(text)
    raise SlurmFormatError(field, value, "expected a number")


def slurm_int(value: object, field: str = "", *, bits: int = 32) -> int | None:
    """A count or id, None when Slurm says "not set" or "infinite".

    Layouts: a plain int (v0.0.37/38, with NO_VAL/INFINITE sentinels), ``null``, a numeric
    string (cc-slurm-adapter saw these in TRES), ``{set, infinite, number}`` (v0.0.39+), and
    "+complex" dumps (v0.0.41+): ``null`` or ``"Infinity"``. ``bits=16`` also treats 65534/65535
    as unset, for Slurm's 16-bit fields.
    """
    kind = type(value)
    if kind is int:  # the common case, checked first: this runs for every field of every job
        return None if value in _SENTINELS or (bits == 16 and value in _SENTINELS16) else value  # type: ignore[return-value]
    if kind is dict:
        if not value.get("set", True) or value.get("infinite", False):  # type: ignore[attr-defined]
            return None
        number = value.get("number")  # type: ignore[attr-defined]
        if type(number) is int:
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
    """
    number = slurm_int(value, field)
    if number is None or number <= 0:
        return None
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


def _tres_value(key: str, raw: str, field: str) -> int:
    if raw.isdigit():
        return int(raw)
    if raw[-1:] in _MEM_MB and raw[:-1].isdigit():
        return int(raw[:-1]) * _MEM_MB[raw[-1]]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTP]?)", raw.strip())
    if not match:
        raise SlurmFormatError(field, raw, f"TRES {key!r} is not a count")
    number, unit = float(match.group(1)), match.group(2)
    if unit:
        number *= _MEM_UNITS[unit]
    return round(number)


def parse_tres_string(value: object, field: str = "") -> Mapping[str, int]:
    """``"cpu=2,mem=500M,node=1,gres/gpu=2"`` -> ``{"cpu": 2, "mem": 500, ...}`` (read-only).

    Memory is in MB. squeue's ``tres_req_str``/``tres_alloc_str`` in every version. Jobs of one
    shape share their TRES strings, so parsed strings are cached and shared.
    """
    text = slurm_str(value, field)
    return cached_with_field(_tres_cached, text, field)


def cached_with_field(parse: Callable[[T], R], key: T, field: str) -> R:
    """`cached_with_field(f, key, field)` calls a cached parser ``f`` (whose errors cannot name
    the caller's field, being shared) and re-raises its error under ``field``."""
    try:
        return parse(key)
    except SlurmFormatError as exc:
        raise SlurmFormatError(field, key, exc.reason) from None


@functools.lru_cache(maxsize=4096)
def _tres_cached(text: str) -> Mapping[str, int]:
    out: dict[str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, raw = part.partition("=")
        if not sep:
            raise SlurmFormatError("", text, f"TRES entry {part!r} has no '='")
        out[key.strip()] = _tres_value(key, raw, "")
    return MappingProxyType(out)


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
