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

What one record may ask for is bounded before anything is expanded: at most
:data:`MAX_GPU_INDICES` indices per node and :data:`MAX_HOSTS` hosts per node list (a range of
billions is a broken producer's, and raises ``SlurmFormatError`` so that its record is skipped).
"""

from __future__ import annotations

import re

import hostlist

from slurm_sync.errors import SlurmFormatError

__all__ = ["MAX_GPU_INDICES", "MAX_HOSTS", "expand_hosts", "gpu_indices"]

MAX_GPU_INDICES = 4096
"""Most GRES indices one node's ``gres_detail`` string may name (nodes have a handful)."""

MAX_HOSTS = 100_000
"""Most hosts one node list may name: python-hostlist's own bound for one range, and more than
any Slurm cluster has nodes."""

_MAX_BRACKETS = 16  # bracket groups in one host name pattern (hostlist recurses once per group)

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


def _expand_index_list(text: str, field: str, room: int) -> list[int]:
    """The indices ``text`` names; more than ``room`` of them raises."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        if not _is_index(low) or (dash and not _is_index(high)):
            raise SlurmFormatError(field, text, f"GRES index {part!r} is not a number or range")
        first = int(low)
        last = int(high) if dash else first
        if last - first + 1 > room - len(out):
            raise SlurmFormatError(
                field, text, f"more than {MAX_GPU_INDICES} GRES indices on one node")
        out.extend(range(first, last + 1))
    return out


def _is_index(text: str) -> bool:
    """1 to 18 ASCII digits (``str.isdigit`` also takes "²", which ``int`` refuses)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


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
            found.update(_expand_index_list(indices, field, MAX_GPU_INDICES - len(found)))
    return tuple(sorted(found))


def expand_hosts(nodelist: str, field: str = "nodes") -> tuple[str, ...]:
    """`expand_hosts("n[1-3]")` is ``("n1", "n2", "n3")``; "None assigned" and "" give ``()``."""
    text = nodelist.strip()
    if "[" not in text and "," not in text and " " not in text:
        return (text,) if text and text.lower() not in _NO_HOSTS else ()
    if text.lower() in _NO_HOSTS:
        return ()
    count = _host_count(text)
    if count is None:
        raise SlurmFormatError(field, nodelist, "not a Slurm host list")
    if count > MAX_HOSTS:
        raise SlurmFormatError(field, nodelist, f"names more than {MAX_HOSTS} hosts")
    try:
        return tuple(hostlist.expand_hostlist(text))
    except hostlist.BadHostlist as exc:
        raise SlurmFormatError(field, nodelist, f"not a Slurm host list ({exc})") from exc


_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


def _host_count(text: str) -> int | None:
    """How many names ``text`` expands to (duplicates counted), without expanding it: at most
    ``MAX_HOSTS + 1`` (more is not counted on); None when it has more than ``_MAX_BRACKETS``
    bracket groups in one name, or a range that is not one."""
    total = 0
    for part in _top_level(text) if "," in text else (text,):
        names = 1
        groups = _BRACKETS.findall(part)
        if len(groups) > _MAX_BRACKETS:
            return None
        for group in groups:
            in_group = 0
            for item in group.split(","):
                low, dash, high = item.strip().partition("-")
                if not dash:
                    in_group += 1
                elif _is_index(low) and _is_index(high):
                    in_group += max(0, int(high) - int(low) + 1)
                else:
                    return None
            names *= in_group
            if names > MAX_HOSTS:
                return MAX_HOSTS + 1
        total += names
        if total > MAX_HOSTS:
            return MAX_HOSTS + 1
    return total


def _top_level(text: str) -> list[str]:
    """Split a host list on the commas outside brackets."""
    parts: list[str] = []
    depth = start = 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts
