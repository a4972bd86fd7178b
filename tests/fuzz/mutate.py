"""Seeded mutations of JSON documents: what a broken or hostile producer, or a careless edit of a
config file, might hand slurm-sync.

    rng = random.Random("1:24.11/squeue-running.json:17")
    text, what = mutate(document_text, rng)       # what: one line saying what was changed

Two kinds, picked at random: a change to the decoded document (a value replaced by one from
:data:`NASTY`, a key dropped or renamed, a list emptied or an item repeated, a value wrapped) and
a change to the text itself (cut short, a token inserted, bytes flipped, a second document or a
duplicate ``errors`` key appended, a number made thousands of digits long). Every input is
rebuilt from ``(seed, name, index)`` alone, so a failure names what to run again.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

# Values no key of Slurm's output or of a config should hold, or that sit at a boundary.
NASTY_NUMBERS: list[Any] = [
    0, -1, 1, 2**31, 2**32 - 2, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 2, 2**64, 10**30,
    -(2**63) - 1, 1e308, -1e308, 0.5, 1e-300, 253402300800, 10**15, True, False,
]
NASTY_STRINGS: list[str] = [
    "", " ", "0", "-1", "1e999", "Infinity", "NaN", "null", "true", "None assigned", "(null)",
    "²", "٣", "𝟘", "Ωmega-déjà-✓", "\u00a0", "\x00", "a\x00b", "\n", "\ud800", "\udc80x",
    "x" * 100_000, "n[0-999999999]", "n[1-100000]", "n[0-99],m[0-99]", "a[1]" * 500, "n[[1]]",
    "n[5-1]", "gpu:a100:2(IDX:0-4000000000)", "gpu:1(IDX:0-1,N/A)", "gpu:2(IDX:²)",
    "gpu(IDX:0-1", "cpu=1" + "0" * 30, "mem=1.5" + "9" * 400 + "K", "cpu=,mem=1", "=",
    "RUNNING", "PENDING,REQUEUED", "COMPLETING", "CANCELLED by 0", "FOO", "24.11.5", "v0.0.42",
    "data_parser/v0.0.99", "/", "/dev/null", "/nonexistent/x", "../x", "*", "%s%n",
    "http://127.0.0.1:9", "https://", "{\"a\": 1}", "\\", "\"",
]
# Strings that look like rich markup: printed as they are only where the CLI escapes them.
MARKUP_STRINGS: list[str] = ["[/x]", "[bold]x[/bold]", "[/]", "[link=x]y"]


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def nasty_value(rng: random.Random, markup: bool = True) -> Any:
    """One value from the pools above, or a shape (an object, a list, a number object)."""
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(NASTY_NUMBERS)
    if roll < 0.75:
        pool = NASTY_STRINGS + (MARKUP_STRINGS if markup else [])
        return rng.choice(pool)
    shapes: list[Callable[[], Any]] = [
        lambda: None,
        lambda: {},
        lambda: [],
        lambda: {"set": True, "infinite": False, "number": rng.choice(NASTY_NUMBERS)},
        lambda: {"set": False},
        lambda: {"infinite": True},
        lambda: [rng.choice(NASTY_STRINGS)],
        lambda: [1, "a", None],
        lambda: {"a": {"b": {"c": []}}},
        lambda: _deep(rng.choice([10, 100, 400])),
        lambda: list(range(rng.choice([10, 1000]))),
    ]
    return rng.choice(shapes)()


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``node`` (the root excluded)."""
    out: list[tuple[Any, ...]] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [(prefix, node)]
    while stack:
        path, value = stack.pop()
        items: list[tuple[Any, Any]] = []
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, list):
            items = list(enumerate(value))
        for key, item in items:
            out.append((*path, key))
            stack.append(((*path, key), item))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


def _structural(doc: Any, rng: random.Random, markup: bool) -> str:
    paths = _paths(doc)
    if not paths:
        return "nothing to change"
    path = rng.choice(paths)
    parent, key = _parent(doc, path), path[-1]
    where = "".join(f"[{k!r}]" for k in path)
    roll = rng.random()
    if roll < 0.55:
        value = nasty_value(rng, markup)
        parent[key] = value
        shown = repr(value)
        return f"set {where} = {shown[:60]}{'...' if len(shown) > 60 else ''}"
    if roll < 0.65:
        del parent[key]
        return f"deleted {where}"
    if roll < 0.72 and isinstance(parent, dict):
        parent[rng.choice(["", "x", "jobs", "errors", "meta", key + "_"])] = parent.pop(key)
        return f"renamed {where}"
    if roll < 0.80:
        parent[key] = [parent[key]]
        return f"wrapped {where} in a list"
    if roll < 0.88 and isinstance(parent[key], list) and parent[key]:
        items = parent[key]
        items.extend(items[:1] * rng.choice([1, 50]))
        return f"repeated the first item of {where}"
    if roll < 0.94 and isinstance(parent[key], (dict, list)):
        parent[key] = type(parent[key])()
        return f"emptied {where}"
    parent[key] = str(parent[key])[:200] if not isinstance(parent[key], str) else 7
    return f"changed the type of {where}"


_TOKENS = [
    "NaN", "Infinity", "-Infinity", "1e999", "1" + "0" * 4400, "[" * 3000, "{" * 3000,
    "\\ud800", "\\udfff\\ud800", "\\u0000", "\x00", "}", "]", ",", ":", '"', "\\", "null",
    '"a": 1,', ', "errors": [{"error": "boom", "error_number": 1}]', "\u2028", "\t\n",
]


def _textual(text: str, rng: random.Random) -> tuple[str, str]:
    roll = rng.random()
    at = rng.randrange(len(text) + 1) if text else 0
    if roll < 0.2:
        return text[:at], f"cut at character {at}"
    if roll < 0.5:
        token = rng.choice(_TOKENS)
        return text[:at] + token + text[at:], f"inserted {token[:20]!r} at {at}"
    if roll < 0.6:
        end = min(len(text), at + rng.choice([1, 10, 1000]))
        return text[:at] + text[end:], f"deleted characters {at} to {end}"
    if roll < 0.7:
        return text + rng.choice(["garbage", text, "\n{}", "\x00"]), "appended a second document"
    if roll < 0.8:
        head, brace, _ = text.rpartition("}")
        extra = ', "errors": []' if rng.random() < 0.5 else ', "jobs": []'
        return head + extra + brace, f"added a duplicate top-level key ({extra.strip(', ')})"
    if roll < 0.9:
        digits = [i for i in range(len(text)) if text[i].isdigit()][:5000]
        if not digits:
            return text, "no digit to lengthen"
        i = rng.choice(digits)
        longer = "9" * rng.choice([30, 4301, 5000])
        return text[:i] + longer + text[i:], f"lengthened a number at {i}"
    chars = list(text)
    for _ in range(rng.choice([1, 5, 50])):
        if chars:
            chars[rng.randrange(len(chars))] = rng.choice("{}[]\",:0a\\/ \u00e9\ud800")
    return "".join(chars), "flipped characters"


def mutate(text: str, rng: random.Random, *, markup: bool = True) -> tuple[str, str]:
    """(the mutated text, what was done): a structural change (60%) or a textual one; now and
    then two at once. ``markup`` false leaves rich-markup strings out of the value pool."""
    steps = []
    for _ in range(2 if rng.random() < 0.15 else 1):
        if rng.random() < 0.6:
            try:
                doc = json.loads(text)
            except (ValueError, RecursionError):
                text, what = _textual(text, rng)
            else:
                what = _structural(doc, rng, markup)
                text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
        else:
            text, what = _textual(text, rng)
        steps.append(what)
    return text, "; ".join(steps)
