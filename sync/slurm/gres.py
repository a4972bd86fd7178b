"""GPU indices from squeue's ``gres_detail`` strings, and node lists from Slurm's host ranges.

    >>> gpu_indices("gpu:a100:2(IDX:0-1)")
    (0, 1)
    >>> gpu_indices("gpu:12(IDX:0,3,10-11),nic:1(IDX:0)")
    (0, 3, 10, 11)
    >>> expand_hosts("n[01-02],gpu7")
    ('n01', 'n02', 'gpu7')

``gres_detail`` holds one string per allocated node, in the order of the job's node list. Each
string is comma-separated GRES entries ``name[:type][:count](IDX:list)``; the type and count are
optional, counts and indices may have several digits, and IDX lists mix single indices and
ranges. ``IDX:N/A`` (no index bound) gives no indices.
"""

from __future__ import annotations

import re

import hostlist

from sync.errors import SlurmFormatError

__all__ = ["expand_hosts", "gpu_indices"]

_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(?::[^()]*)?\((?P<detail>[^()]*)\)$")
_NO_HOSTS = {"", "none assigned", "(null)", "none"}


def _split_entries(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    entries: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            entries.append(current)
            current = ""
        else:
            current += char
    entries.append(current)
    return [e.strip() for e in entries if e.strip()]


def _expand_index_list(text: str, field: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise SlurmFormatError(field, text, f"GRES index {part!r} is not a number or range")
        if dash:
            out.extend(range(int(low), int(high) + 1))
        else:
            out.append(int(low))
    return out


def gpu_indices(detail: str, field: str = "gres_detail", name: str = "gpu") -> tuple[int, ...]:
    """`gpu_indices(s)` is the sorted GPU indices one ``gres_detail`` string names."""
    found: set[int] = set()
    for entry in _split_entries(detail):
        match = _ENTRY.match(entry)
        if not match or match.group("name") != name:
            continue
        for part in match.group("detail").split("IDX:")[1:]:
            indices = part.split(";")[0].strip()
            if indices.upper() == "N/A":
                continue
            found.update(_expand_index_list(indices, field))
    return tuple(sorted(found))


def expand_hosts(nodelist: str, field: str = "nodes") -> tuple[str, ...]:
    """`expand_hosts("n[1-3]")` is ``("n1", "n2", "n3")``; "None assigned" and "" give ``()``."""
    text = nodelist.strip()
    if "[" not in text and "," not in text and " " not in text:
        return (text,) if text and text.lower() not in _NO_HOSTS else ()
    if text.lower() in _NO_HOSTS:
        return ()
    try:
        return tuple(hostlist.expand_hostlist(text))
    except hostlist.BadHostlist as exc:
        raise SlurmFormatError(field, nodelist, f"not a Slurm host list ({exc})") from exc
