"""Normalize ``squeue --json`` and ``sacct --json`` of any Slurm version into ``Job`` records.

    >>> result = parse_squeue(open("tests/fixtures/slurm/24.11/squeue-running.json").read())
    >>> result.producer.plugin, len(result.skipped)  # doctest: +SKIP
    ('v0.0.42', 0)

Pure functions over data: no commands, no clock. Version differences are handled by the shape of
each value (see ``shapes.py``), never by the version number, except the few Slurm bugs whose output
looks valid and is wrong; those are listed in ``Quirks`` and decided in ``quirks_of`` alone.

A record that cannot be read becomes a ``Skipped`` entry with its reason and the rest of the
document still parses. A document that is not JSON, or that carries Slurm ``errors``, raises.

A broken or hostile producer costs one skipped record or one ``SlurmFormatError`` for the
document, never another exception or unbounded memory: the document must be exactly one JSON
object (string keys, each top-level key once, nothing after it, no ``NaN``/``Infinity``, nesting
within Python's recursion limit); numbers are bounded to 64 bits and times to the year 9999; a
record may name at most ``MAX_HOSTS`` hosts and ``MAX_GPU_INDICES`` GPU indices per node, and a
document at most ``max(1,000,000, 16 x its size in bytes)`` hosts in all; a lone UTF-16
surrogate escape (``"\\ud800"``) is read as U+FFFD, so every string of the model can be written
as UTF-8.

Layouts of ``job_resources`` (per node: which cores, on which socket):
- v0.0.37 (21.08): ``allocated_nodes`` maps node index -> flat ``sockets`` and ``cores`` maps;
  core keys are ``i % cores_per_socket`` and collide across sockets (Slurm bug 12982): on a node
  with more than one socket the allocation is marked ambiguous, never guessed.
- v0.0.38 to v0.0.40: ``allocated_nodes`` is a list of ``{nodename, sockets: {s: {cores: {c:
  state}}}}``; core keys are per socket, so node-wide ids need the node's cores per socket.
- v0.0.41+: ``nodes.allocation[]`` of ``{name, sockets: [{index, cores: [{index, status: []}]}]}``
  listing every core of the node, allocated or not.
"""

from __future__ import annotations

import codecs
import functools
import gc
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Union

from slurm_sync.errors import SlurmError, SlurmFormatError
from slurm_sync.slurm.gres import expand_hosts, gpu_indices
from slurm_sync.slurm.model import (
    ExitCode,
    Job,
    JobState,
    NodeAllocation,
    NodeTopology,
    Producer,
    Skipped,
)
from slurm_sync.slurm.shapes import (
    ascii_digits,
    cached_with_field,
    parse_tres_list,
    parse_tres_string,
    slurm_int,
    slurm_str,
    slurm_time,
    slurm_words,
)

__all__ = [
    "ParseResult",
    "Quirks",
    "job_state",
    "load_document",
    "parse_sacct",
    "parse_squeue",
    "quirks_of",
    "read_producer",
    "resolve_cpu_ids",
]

Document = Union[str, bytes, Mapping[str, Any]]


@dataclass(frozen=True)
class ParseResult:
    """What one document said: its jobs, the records skipped with reasons, and who made it."""

    jobs: tuple[Job, ...]
    skipped: tuple[Skipped, ...]
    producer: Producer
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Quirks:
    """Slurm bugs whose output is well-formed but wrong, by producer.

    ``sacct_start_is_eligible``: dbv0.0.37, and dbv0.0.38 before 22.05.8, fill sacct
    ``time.start`` from the eligible time (Slurm bug 15644); the start is then rebuilt as
    ``end - elapsed - suspended`` for ended jobs and left unknown for others.

    ``sacct_exit_code_lost``: dbv0.0.37 to v0.0.39 (21.08 to 23.02) give sacct ``exit_code``
    as ``{status: "SUCCESS", return_code: 0}`` for every normal exit, 3 included; parsed, a
    job that ended otherwise than COMPLETED then has an unknown code, and the reader asks
    sacct's text output (``ExitCode`` is right there) for those jobs.
    """

    sacct_start_is_eligible: bool = False
    sacct_exit_code_lost: bool = False


def quirks_of(producer: Producer) -> Quirks:
    """`quirks_of(p)` lists the known-wrong values of producer ``p``."""
    plugin = producer.plugin.removeprefix("db")
    old_start = plugin == "v0.0.37" or (plugin == "v0.0.38" and producer.version < (22, 5, 8))
    return Quirks(sacct_start_is_eligible=old_start,
                  sacct_exit_code_lost=plugin in ("v0.0.37", "v0.0.38", "v0.0.39"))


# --- document level ---------------------------------------------------------------------------
#
# A document is read one job record at a time: the top-level object is walked with the C
# decoder's raw_decode, each record is normalized and dropped, so memory holds the text and the
# Job records, never the whole decoded tree (a 24.11 dump of 10,000 jobs is 77 MB of text).

def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_WS = re.compile(r"[ \t\n\r]*")
_ESCAPE_ERRORS = "slurm-sync-json-escape"


def _escape_non_ascii(error: UnicodeError) -> tuple[str, int]:
    """Decode error handler: a run of non-ASCII bytes becomes JSON ``\\uXXXX`` escapes.

    Non-ASCII bytes can only stand inside JSON strings, where escapes mean the same characters;
    the text then stays one byte per character however exotic the job names are.
    """
    if not isinstance(error, UnicodeDecodeError):
        raise error
    data, end = error.object, error.start
    while end < len(data) and data[end] >= 0x80:
        end += 1
    chars = bytes(data[error.start : end]).decode("utf-8", errors="replace")
    escaped = json.dumps(chars, ensure_ascii=True)[1:-1]
    return escaped, end


codecs.register_error(_ESCAPE_ERRORS, _escape_non_ascii)


def _json_text(raw: str | bytes) -> str:
    if isinstance(raw, str):
        text = raw
    elif raw.isascii():
        text = raw.decode("ascii")
    else:
        text = raw.decode("ascii", errors=_ESCAPE_ERRORS)
    return _valid_text(text)


# JSON can escape half of a UTF-16 surrogate pair alone ("\ud800"): it decodes to a str that no
# encoder writes, which would crash `jobs --json` and every write of the job's name. Such an
# escape becomes U+FFFD before decoding; escaped backslashes and whole pairs are left as they are.
_SURROGATE_HINT = re.compile(r"\\u[dD][89a-fA-F]")
_ESCAPE_OR_SURROGATE = re.compile(
    r"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
)
_RAW_SURROGATE = re.compile("[\ud800-\udfff]")


def _keep_or_replace(match: re.Match[str]) -> str:
    text = match.group()
    return "\\ufffd" if len(text) == 6 else text


def _valid_text(text: str) -> str:
    """``text`` with lone surrogates, escaped or not, made U+FFFD."""
    if _SURROGATE_HINT.search(text):
        text = _ESCAPE_OR_SURROGATE.sub(_keep_or_replace, text)
    if not text.isascii() and _RAW_SURROGATE.search(text):
        text = _RAW_SURROGATE.sub("\ufffd", text)
    return text


def _walk(text: str, what: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(key, value)`` for each top-level member and ``("jobs[]", record)`` for each job.

    Text before the first ``{`` (multi-cluster squeue prints a header) is skipped; anything but
    white space after the object (a second document) raises, as does a key that is not a string
    or a top-level key given twice (a later empty ``errors`` must not hide an earlier one).
    """
    decode, ws = _DECODER.raw_decode, _WS.match
    i = text.find("{")
    if i < 0:
        raise SlurmFormatError(what, text[:60], "output is not JSON")
    seen: set[str] = set()
    try:
        i = ws(text, i + 1).end()  # type: ignore[union-attr]
        if text[i : i + 1] == "}":
            _expect_end(text, i + 1, what)
            return
        while True:
            if text[i : i + 1] != '"':
                raise json.JSONDecodeError("expected a string key", text, i)
            key, i = decode(text, i)
            if key in seen:
                raise SlurmFormatError(what, key, "this key is in the document twice")
            seen.add(key)
            i = ws(text, i).end()  # type: ignore[union-attr]
            if text[i : i + 1] != ":":
                raise json.JSONDecodeError("expected ':'", text, i)
            i = ws(text, i + 1).end()  # type: ignore[union-attr]
            if key == "jobs" and text[i : i + 1] == "[":
                i = ws(text, i + 1).end()  # type: ignore[union-attr]
                yield "jobs", []
                if text[i : i + 1] == "]":
                    i += 1
                else:
                    while True:
                        record, i = decode(text, i)
                        yield "jobs[]", record
                        i = ws(text, i).end()  # type: ignore[union-attr]
                        char = text[i : i + 1]
                        i = ws(text, i + 1).end()  # type: ignore[union-attr]
                        if char == "]":
                            break
                        if char != ",":
                            raise json.JSONDecodeError("expected ',' or ']'", text, i - 1)
            else:
                value, i = decode(text, i)
                yield key, value
            i = ws(text, i).end()  # type: ignore[union-attr]
            char = text[i : i + 1]
            if char == "}":
                _expect_end(text, i + 1, what)
                return
            if char != ",":
                raise json.JSONDecodeError("expected ',' or '}'", text, i)
            i = ws(text, i + 1).end()  # type: ignore[union-attr]
    except (ValueError, IndexError, RecursionError) as exc:
        # ValueError: JSONDecodeError, NaN/Infinity, an integer of more than 4300 digits
        raise SlurmFormatError(
            what, text[:60], f"output is not JSON ({_decode_problem(exc, i)})"
        ) from None


def _expect_end(text: str, i: int, what: str) -> None:
    end = _WS.match(text, i).end()  # type: ignore[union-attr]
    if end != len(text):
        raise SlurmFormatError(
            what, text[end : end + 60], f"text after the JSON document (at character {end})"
        )


def _decode_problem(exc: BaseException, i: int) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return str(exc)
    if isinstance(exc, RecursionError):
        return f"nested too deep, near character {i}"
    message = str(exc)
    if "integer string conversion" in message:
        message = "an integer of more than 4300 digits"
    return f"{message[:100]}, near character {i}"


def load_document(raw: Document, what: str) -> Mapping[str, Any]:
    """Decode a whole ``--json`` document; raise one clear error for non-JSON or Slurm ``errors``.

    ``parse_squeue``/``parse_sacct`` stream instead; this is for small documents and tests.
    """
    if isinstance(raw, Mapping):
        doc: Any = raw
    else:
        doc = {}
        for key, value in _walk(_json_text(raw), what):
            if key == "jobs[]":
                doc["jobs"].append(value)
            else:
                doc[key] = value
    if not isinstance(doc, Mapping):
        raise SlurmFormatError(what, doc, "expected a JSON object")
    _raise_errors(doc.get("errors"), what)
    return doc


# ESLURM_REST_EMPTY_RESULT: 22.05's sacct --json reports an empty window as this "error".
_EMPTY_RESULT = 9003


def _is_empty_result(error: object) -> bool:
    return isinstance(error, dict) and error.get("error_number", error.get("error_code")) in (
        _EMPTY_RESULT,
        str(_EMPTY_RESULT),
    )


def _raise_errors(errors: object, what: str) -> None:
    """Raise for Slurm's ``errors``; "nothing found" (error 9003) is an empty result."""
    if errors:
        listed = [e for e in (errors if isinstance(errors, list) else [errors])
                  if not _is_empty_result(e)]
        if listed:
            described = "; ".join(_describe(e) for e in listed)
            raise SlurmError(f"{what} reported errors: {described}")


def _describe(error: object) -> str:
    if isinstance(error, dict):
        parts = [
            str(error.get(k))
            for k in ("error", "description", "source")
            if error.get(k) not in (None, "")
        ]
        code = error.get("error_number", error.get("error_code"))
        if code not in (None, 0):
            parts.append(f"(error {code})")
        return " ".join(parts) or json.dumps(error)
    return str(error)


def read_producer(doc: Mapping[str, Any]) -> Producer:
    """Which plugin and release made ``doc``.

    Layouts: ``meta.plugin.type = "openapi/v0.0.38"`` with ``meta.Slurm`` (21.08, 22.05);
    ``meta.plugins.data_parser`` with ``meta.Slurm`` (23.02); ``meta.plugin.data_parser =
    "data_parser/v0.0.42"`` with lowercase ``meta.slurm`` whose version parts are strings (23.11+).
    """
    meta = doc.get("meta") or {}
    if not isinstance(meta, dict):
        return Producer()
    plugin_text = ""
    for holder_key in ("plugin", "plugins"):
        holder = meta.get(holder_key)
        if isinstance(holder, dict):
            plugin_text = _short_text(holder.get("data_parser")) or _short_text(holder.get("type"))
            if plugin_text:
                break
    plugin = plugin_text.rsplit("/", 1)[-1]
    slurm = meta.get("slurm") or meta.get("Slurm") or {}
    release = ""
    version = (0, 0, 0)
    cluster = None
    if isinstance(slurm, dict):
        release = _short_text(slurm.get("release"))
        parts = slurm.get("version")
        if isinstance(parts, dict):
            numbers = [_version_part(parts.get(k)) for k in ("major", "minor", "micro")]
            if None not in numbers:
                version = tuple(numbers)  # type: ignore[assignment]
        if version == (0, 0, 0) and release:
            version = _version_from_release(release)
        cluster = slurm_str(slurm.get("cluster"), "meta.slurm.cluster") or None
    return Producer(plugin=plugin, release=release, version=version, cluster=cluster)


def _short_text(value: object) -> str:
    """A producer's name or release: a string of at most 100 characters, else nothing."""
    return value[:100] if isinstance(value, str) else ""


def _version_part(value: object) -> int | None:
    """One part of ``meta.slurm.version``: an int or a string of ASCII digits (23.11+), 0 when
    absent, None when it is anything else (then the release string is read instead)."""
    if value is None or value == "":
        return 0
    if type(value) is int and 0 <= value < 1_000_000:
        return value
    if isinstance(value, str) and ascii_digits(value, 6):
        return int(value)
    return None


def _version_from_release(release: str) -> tuple[int, int, int]:
    numbers = []
    for part in release.split(".")[:3]:
        digits = "".join(c for c in part if "0" <= c <= "9")[:6]
        numbers.append(int(digits) if digits else 0)
    while len(numbers) < 3:
        numbers.append(0)
    return (numbers[0], numbers[1], numbers[2])


def _describe_all(values: object) -> tuple[str, ...]:
    return tuple(_describe(w) for w in values) if isinstance(values, list) else ()


RecordParser = Callable[[Mapping[str, Any], Producer], Job]


def _parse_one(
    record: object, index: int, what: str, producer: Producer, one: RecordParser
) -> Job | Skipped:
    where = f"{what}.jobs[{index}]"
    job_id = _skipped_id(record.get("job_id")) if isinstance(record, dict) else None
    try:
        if not isinstance(record, dict):
            reason = str(SlurmFormatError(where, record, "a job record must be an object"))
            return Skipped(index=index, job_id=job_id, reason=reason)
        return one(record, producer)
    except SlurmFormatError as exc:
        field = f"{where}.{exc.field}" if exc.field else where
        reason = str(SlurmFormatError(field, exc.value, exc.reason, producer.plugin))
    except RecursionError:
        reason = f"{where}: nested too deep"
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError, IndexError) as exc:
        reason = f"{where}: {type(exc).__name__}: {str(exc)[:200]}"
    return Skipped(index=index, job_id=job_id, reason=reason)


def _skipped_id(value: object) -> int | str | None:
    """A skipped record's ``job_id`` as far as it can be told: an int or a short string, never
    a broken producer's object (which ``jobs --json`` would then have to print)."""
    if type(value) is int:
        return value
    if isinstance(value, str):
        return value[:80]
    if isinstance(value, dict):
        try:
            return slurm_int(value, "job_id")
        except SlurmFormatError:
            return None
    return None


def _members_of(doc: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """The members of an already-decoded document as ``_walk`` yields them, meta first."""
    if "meta" in doc:
        yield "meta", doc["meta"]
    for key, value in doc.items():
        if key not in ("meta", "jobs"):
            yield key, value
    jobs = doc.get("jobs")
    if isinstance(jobs, list):
        yield "jobs", []
        for record in jobs:
            yield "jobs[]", record
    elif "jobs" in doc:
        yield "jobs", jobs


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cycle collector: parsing makes many objects and no cycles, and each collection
    would walk every record made so far (a third of the time on 10,000 jobs)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _parse_all(
    raw: Document, what: str, one: RecordParser, default_cluster: str | None
) -> ParseResult:
    with _no_cyclic_gc():
        try:
            return _parse_members(raw, what, one, default_cluster)
        except RecursionError:
            raise SlurmFormatError(what, None, "a value is nested too deep") from None


MAX_DOCUMENT_HOSTS = 1_000_000
"""Hosts a document may name in all, or ``16 x`` its size in bytes if more: each record is
bounded (``sync.slurm.gres.MAX_HOSTS``), and this bounds what many small records may ask for
together."""


def _parse_members(
    raw: Document, what: str, one: RecordParser, default_cluster: str | None
) -> ParseResult:
    if isinstance(raw, Mapping):
        members = _members_of(raw)
        host_budget = None
    else:
        members = _walk(_json_text(raw), what)
        host_budget = max(MAX_DOCUMENT_HOSTS, 16 * len(raw))
    top: dict[str, Any] = {}
    producer = Producer()  # what is known of the producer when the jobs are read
    parsed: list[Job | Skipped] = []
    hosts = 0
    try:
        for key, value in members:
            if key == "jobs[]":
                item = _parse_one(value, len(parsed), what, producer, one)
                if host_budget is not None and isinstance(item, Job):
                    hosts += len(item.hosts)
                    if hosts > host_budget:
                        hosts -= len(item.hosts)
                        item = Skipped(len(parsed), item.job_id, (
                            f"{what}.jobs[{len(parsed)}]: the document names more than "
                            f"{host_budget} hosts, too many for its size"))
                parsed.append(item)
                continue
            top[key] = value
            if key == "meta" and "jobs" not in top:
                producer = read_producer(top)
    except SlurmFormatError:
        _raise_errors(top.get("errors"), what)  # what Slurm said explains a broken document
        raise
    _raise_errors(top.get("errors"), what)
    if "jobs" not in top:
        raise SlurmFormatError(f"{what}.jobs", None, "the document has no jobs list")
    if not isinstance(top["jobs"], list):
        raise SlurmFormatError(f"{what}.jobs", top["jobs"], "expected a list of jobs")
    final = read_producer(top)
    if parsed and quirks_of(final) != quirks_of(producer):
        # meta came after jobs whose reading depends on it: read again with meta first.
        return _parse_all(load_document(raw, what), what, one, default_cluster)
    cluster = final.cluster or default_cluster
    if cluster:
        parsed = [
            replace(p, cluster=cluster) if isinstance(p, Job) and p.cluster is None else p
            for p in parsed
        ]
    return ParseResult(
        jobs=tuple(p for p in parsed if isinstance(p, Job)),
        skipped=tuple(p for p in parsed if isinstance(p, Skipped)),
        producer=final,
        warnings=_describe_all(top.get("warnings")),
    )


def parse_squeue(raw: Document, *, cluster: str | None = None) -> ParseResult:
    """`parse_squeue(text)` reads ``squeue --json`` (or ``scontrol --json show job``).

    ``cluster`` names jobs whose record and document do not.
    """
    return _parse_all(raw, "squeue", job_from_squeue, cluster)


def parse_sacct(raw: Document, *, cluster: str | None = None) -> ParseResult:
    """`parse_sacct(text)` reads ``sacct --json`` (one record per job with ``-X``)."""
    return _parse_all(raw, "sacct", job_from_sacct, cluster)


# --- state and exit code ------------------------------------------------------------------------

_BASE_STATES: dict[str, JobState] = {
    s.value: s
    for s in JobState
    if s not in (JobState.UNKNOWN, JobState.COMPLETING, JobState.REQUEUED)
}
_BASE_STATES["COMPLETE"] = JobState.COMPLETED
_BASE_STATES["OOM"] = JobState.OUT_OF_MEMORY
# What a flag alone means when a producer printed only the flag (22.05's job_state string).
_FLAG_IMPLIES = {
    "COMPLETING": JobState.COMPLETING,
    "STAGE_OUT": JobState.COMPLETING,
    "CONFIGURING": JobState.RUNNING,
    "POWER_UP_NODE": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "SPECIAL_EXIT": JobState.PENDING,
    "REVOKED": JobState.CANCELLED,
}


def job_state(value: object, field: str = "job_state") -> tuple[JobState, tuple[str, ...]]:
    """`job_state(v)` is (base state, flags) from ``"RUNNING"``, ``["PENDING", "REQUEUED"]``
    or sacct's ``"CANCELLED by 1000"``.

    A job flagged COMPLETING is COMPLETING whatever its base: it still holds its nodes.
    """
    return cached_with_field(_job_state_cached, slurm_words(value, field), field)


@functools.lru_cache(maxsize=1024)
def _job_state_cached(raw_words: tuple[str, ...]) -> tuple[JobState, tuple[str, ...]]:
    words = tuple(w.split()[0].upper() for w in raw_words if w.split())
    if not words:
        raise SlurmFormatError("", raw_words, "no job state")
    base: JobState | None = next((_BASE_STATES[w] for w in words if w in _BASE_STATES), None)
    flags = tuple(w for w in words if w not in _BASE_STATES)
    if "COMPLETING" in flags:
        return JobState.COMPLETING, flags
    if base is None:
        base = next((_FLAG_IMPLIES[f] for f in flags if f in _FLAG_IMPLIES), JobState.UNKNOWN)
    return base, flags


def _wait_status(status: int) -> ExitCode:
    signal = status & 0x7F
    if signal:
        return ExitCode(return_code=None, signal=signal)
    return ExitCode(return_code=(status >> 8) & 0xFF, signal=None)


def exit_code(value: object, state: JobState, field: str = "exit_code") -> ExitCode:
    """How the job ended, or ``ExitCode()`` while it has not.

    Layouts: a raw wait status int (squeue v0.0.37/38), ``{set, infinite, number}`` of the wait
    status (squeue v0.0.39), ``{status: "SUCCESS"|"ERROR"|"SIGNALED"|..., return_code, signal}``
    with a string status (sacct up to v0.0.39), and ``{status: [...], return_code: {set, ...},
    signal: {id: {set, ...}, name}}`` (v0.0.40+). The string-status form says SUCCESS with
    return code 0 for every normal exit, non-zero ones included; then only a COMPLETED state
    makes the 0 believable and otherwise the return code is unknown.
    """
    if not state.finished and state is not JobState.COMPLETING:
        return ExitCode()
    if value is None:
        return ExitCode()
    if not isinstance(value, dict) or "status" not in value:
        raw = slurm_int(value, field)
        return ExitCode() if raw is None else _wait_status(raw)
    status = value.get("status")
    return_code = slurm_int(value.get("return_code"), f"{field}.return_code")
    signal_obj = value.get("signal")
    signal = None
    if isinstance(signal_obj, dict):
        signal = slurm_int(
            signal_obj.get("id", signal_obj.get("signal_id")), f"{field}.signal.id"
        )
    if isinstance(status, str):
        words = {status.upper()}
        if "SUCCESS" in words and state is not JobState.COMPLETED:
            return ExitCode(return_code=None, signal=signal or None)
    else:
        words = {w.upper() for w in slurm_words(status, f"{field}.status")}
    if "PENDING" in words and len(words) == 1:
        return ExitCode()
    if words & {"SIGNALED", "CORE_DUMPED"}:
        return ExitCode(return_code=None, signal=signal or None)
    return ExitCode(return_code=return_code, signal=signal or None)


# --- allocations --------------------------------------------------------------------------------


MAX_INDEX = 1 << 24
"""The largest socket, core or node index read (nodes have hundreds of cores, not millions)."""


def _index(key: object, field: str) -> int:
    if type(key) is str and ascii_digits(key):
        number: int | None = int(key)
    else:
        number = slurm_int(key, field)
    if number is None or number < 0:
        raise SlurmFormatError(field, key, "expected an index")
    if number > MAX_INDEX:
        raise SlurmFormatError(field, key, f"an index beyond {MAX_INDEX}")
    return number


_ALLOCATED = frozenset({"ALLOCATED", "IN_USE", "ALLOCATED_AND_IN_USE", "ASSIGNED"})
_ALLOCATED_ANY_CASE = _ALLOCATED | {w.lower() for w in _ALLOCATED}


def _allocated(status: object, field: str) -> bool:
    """A core's status: ``"allocated"`` (v0.0.38-40) or ``["ALLOCATED", "IN_USE"]`` (v0.0.41+)."""
    if type(status) is str:
        return status in _ALLOCATED_ANY_CASE or status.upper() in _ALLOCATED
    if type(status) is list:
        for word in status:
            if word in _ALLOCATED_ANY_CASE:
                return True
    if isinstance(status, dict):
        status = status.get("status")
    return any(w.upper() in _ALLOCATED for w in slurm_words(status, field))


def _node_allocation(
    hostname: str, sockets: object, memory: int | None, field: str
) -> NodeAllocation:
    """One node of the nested layouts, in one loop (it runs for every node of every running job).

    v0.0.38-40: ``{"0": {"cores": {"1": "allocated"}}}``, only allocated cores listed, core keys
    inside the socket; v0.0.41+: ``[{"index": 0, "cores": [{"index": 1, "status":
    ["ALLOCATED"]}]}]`` listing every core of the node.
    """
    if isinstance(sockets, dict):
        socket_items: Iterable[tuple[object, object]] = sockets.items()
    elif isinstance(sockets, list):
        socket_items = ((s.get("index") if isinstance(s, dict) else None, s) for s in sockets)
    elif sockets is None:
        socket_items = ()
    else:
        raise SlurmFormatError(field, sockets, "expected a map or a list of sockets")
    cores: list[tuple[int, int]] = []
    sockets_seen: set[int] = set()
    per_socket = 0
    lists_unallocated = False
    for key, socket in socket_items:
        s = (int(key) if type(key) is str and key.isdigit() and key.isascii() and len(key) < 10
             else key)
        if type(s) is not int or not 0 <= s <= MAX_INDEX or not isinstance(socket, dict):
            s = _index(key, f"{field}.sockets.{key}")
            if not isinstance(socket, dict):
                raise SlurmFormatError(f"{field}.sockets.{key}", socket, "expected a socket")
        sockets_seen.add(s)
        listed = socket.get("cores")
        if isinstance(listed, dict):
            pairs: Iterable[tuple[object, object]] = listed.items()
        elif isinstance(listed, list):
            pairs = (
                (c.get("index"), c.get("status")) if isinstance(c, dict) else (None, c)
                for c in listed
            )
        elif listed is None:
            pairs = ()
        else:
            raise SlurmFormatError(f"{field}.sockets.{key}.cores", listed, "expected cores")
        count = 0
        for core_key, status in pairs:
            c = (int(core_key) if type(core_key) is str and core_key.isdigit()
                 and core_key.isascii() and len(core_key) < 10 else core_key)
            if type(c) is not int or not 0 <= c <= MAX_INDEX:
                c = _index(core_key, f"{field}.sockets.{key}.cores")
            count += 1
            if _allocated(status, f"{field}.sockets.{key}.cores.{core_key}"):
                cores.append((s, c))
            else:
                lists_unallocated = True
        per_socket = max(per_socket, count)
    cores.sort()
    cpu_ids = None
    if lists_unallocated:
        # Every core of the node is listed (v0.0.41+): cores per socket is what is listed.
        cpu_ids = tuple(s * per_socket + c for s, c in cores)
    elif cores and sockets_seen == {0}:
        # Only socket 0 holds cores: per-socket index is the node-wide index.
        cpu_ids = tuple(c for _, c in cores)
    return NodeAllocation(hostname, tuple(cores), cpu_ids, (), memory)


def _flat_allocation(hostname: str, node: Mapping[str, Any], field: str) -> NodeAllocation:
    """One node of v0.0.37's flat ``sockets``/``cores`` maps (Slurm bug 12982).

    Only allocated cores are listed ("assigned" says a step uses the core, "unassigned" that none
    does). Core keys are ``i % cores_per_socket``: with one socket listed they are exact, with
    more they collide, and the allocation is ambiguous. With patches/ applied the keys are the
    node-wide index ``i``; the two cannot be told apart here, so the keys are kept (socket -1
    when several sockets are listed) and :func:`resolve_cpu_ids` decides with the topology.
    """
    sockets = node.get("sockets") or {}
    cores = node.get("cores") or {}
    if not isinstance(sockets, dict) or not isinstance(cores, dict):
        raise SlurmFormatError(field, node, "expected flat sockets/cores maps")
    memory = slurm_int(node.get("memory"), f"{field}.memory")
    core_keys = sorted(_index(k, f"{field}.cores.{k}") for k in cores)
    if len(sockets) > 1:
        return NodeAllocation(hostname=hostname, cores=tuple((-1, c) for c in core_keys),
                              memory_mb=memory, ambiguous=True)
    socket = _index(next(iter(sockets)), f"{field}.sockets") if sockets else 0
    return NodeAllocation(
        hostname=hostname,
        cores=tuple((socket, c) for c in core_keys),
        cpu_ids=tuple(core_keys) if socket == 0 else None,
        memory_mb=memory,
    )


def _allocations(
    resources: object, hosts: tuple[str, ...], field: str
) -> list[NodeAllocation]:
    if not isinstance(resources, dict) or not resources:
        return []
    nodes = resources.get("nodes")
    if isinstance(nodes, dict) and "allocation" in nodes:
        out = []
        for i, node in enumerate(nodes.get("allocation") or []):
            where = f"{field}.nodes.allocation[{i}]"
            if not isinstance(node, dict):
                raise SlurmFormatError(where, node, "expected a node object")
            memory = node.get("memory")
            allocated = memory.get("allocated") if isinstance(memory, dict) else None
            name = slurm_str(node.get("name"), f"{where}.name")
            out.append(
                _node_allocation(
                    name, node.get("sockets"), slurm_int(allocated, f"{where}.memory"), where
                )
            )
        return out
    allocated_nodes = resources.get("allocated_nodes")
    if isinstance(allocated_nodes, list):
        out = []
        for i, node in enumerate(allocated_nodes):
            where = f"{field}.allocated_nodes[{i}]"
            if not isinstance(node, dict):
                raise SlurmFormatError(where, node, "expected a node object")
            name = slurm_str(node.get("nodename"), f"{where}.nodename") or _host_at(hosts, i)
            memory = slurm_int(node.get("memory_allocated", node.get("memory")), where)
            out.append(_node_allocation(name, node.get("sockets"), memory, where))
        return out
    if isinstance(allocated_nodes, dict):
        out = []
        indexed = sorted(
            (_index(key, f"{field}.allocated_nodes.{key}"), key, node)
            for key, node in allocated_nodes.items()
        )
        for index, key, node in indexed:
            where = f"{field}.allocated_nodes.{key}"
            if not isinstance(node, dict):
                raise SlurmFormatError(where, node, "expected a node object")
            out.append(_flat_allocation(_host_at(hosts, index), node, where))
        return out
    return []


def _gres_detail(value: object, field: str) -> tuple[str, ...]:
    """One string per node, kept in node order (an empty string is a node without GRES)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise SlurmFormatError(field, value, "expected a list of GRES strings")


def _host_at(hosts: tuple[str, ...], index: int) -> str:
    if 0 <= index < len(hosts):
        return hosts[index]
    raise SlurmFormatError("job_resources", index, f"node index outside the job's {len(hosts)}")


def _with_gpus(
    allocations: list[NodeAllocation], hosts: tuple[str, ...], gres: tuple[str, ...], field: str
) -> tuple[NodeAllocation, ...]:
    """Attach GPU indices: ``gres_detail[i]`` belongs to the job's i-th node."""
    if not any(gres):
        return tuple(allocations) if allocations else tuple(NodeAllocation(h) for h in hosts)
    gpus_by_host = {
        host: gpu_indices(detail, f"{field}.gres_detail[{i}]" if field else f"gres_detail[{i}]")
        for i, (host, detail) in enumerate(zip(hosts, gres))
    }
    if not allocations:
        allocations = [NodeAllocation(hostname=h) for h in hosts]
    return tuple(replace(a, gpu_ids=gpus_by_host.get(a.hostname, ())) for a in allocations)


def resolve_cpu_ids(
    jobs: Iterable[Job], topology: Mapping[str, NodeTopology]
) -> tuple[Job, ...]:
    """Fill node-wide ``cpu_ids`` where the document gave only (socket, core) pairs.

    v0.0.38 to v0.0.40 key cores by their index inside the socket; the node's cores per socket
    (from one ``sinfo`` call, see ``reader.py``) turns them into node-wide ids. A core key at or
    above cores-per-socket can only be a node-wide index: Slurm 21.08 with patches/ applied.
    Its keys are taken as they are (unpatched keys are always below it, and on socket 0 the two
    forms agree); an unpatched 21.08 allocation over several sockets stays ambiguous.
    """
    out = []
    for job in jobs:
        changed = False
        allocations = []
        for alloc in job.allocations:
            node = topology.get(alloc.hostname)
            if alloc.cpu_ids is not None or node is None:
                allocations.append(alloc)
                continue
            per_socket = node.cores_per_socket
            if per_socket <= 0:  # a node sinfo reports no cores for: nothing to compute with
                allocations.append(alloc)
                continue
            if any(c >= per_socket for _, c in alloc.cores):
                ids = tuple(sorted(c for _, c in alloc.cores))
                alloc = replace(alloc, cpu_ids=ids, ambiguous=False,
                                cores=tuple((i // per_socket, i % per_socket) for i in ids))
                changed = True
            elif not alloc.ambiguous:
                ids = tuple(s * per_socket + c for s, c in alloc.cores)
                alloc = replace(alloc, cpu_ids=ids)
                changed = True
            allocations.append(alloc)
        out.append(replace(job, allocations=tuple(allocations)) if changed else job)
    return tuple(out)


# --- records ------------------------------------------------------------------------------------


def _job_id(record: Mapping[str, Any]) -> int:
    job_id = slurm_int(record.get("job_id"), "job_id")
    if job_id is None or job_id <= 0:
        raise SlurmFormatError("job_id", record.get("job_id"), "no job id")
    return job_id


def _optional_id(value: object, field: str) -> int | None:
    """Array and het ids: 0 and unset both mean "not part of one"."""
    number = slurm_int(value, field)
    return number if number else None


def _text(record: Mapping[str, Any], key: str) -> str | None:
    value = record.get(key)
    if type(value) is str:
        return value or None
    return slurm_str(value, key) or None


def _reason(value: object, field: str) -> str:
    text = slurm_str(value, field)
    return "" if text == "None" else text


# Field names in errors are relative to the record; _parse_one adds where the record was.


# squeue fields read as they are, by kind: (Job field, squeue key). The loops below take the
# common plain value directly and hand any other shape to the coercer (shapes.py).
_SQUEUE_TEXT = (
    ("cluster", "cluster"),
    ("user", "user_name"),
    ("account", "account"),
    ("partition", "partition"),
    ("qos", "qos"),
    ("array_tasks_pending", "array_task_string"),
    ("work_dir", "current_working_directory"),
)
_SQUEUE_STR = (
    ("name", "name"),
    ("comment", "comment"),
    ("admin_comment", "admin_comment"),
    ("system_comment", "system_comment"),
)
_SQUEUE_INT = (
    ("uid", "user_id"),
    ("time_limit", "time_limit"),
    ("node_count", "node_count"),
    ("cpus", "cpus"),
)
_SQUEUE_TIME = (("submit_time", "submit_time"), ("eligible_time", "eligible_time"))
_NO_VAL = 0xFFFFFFFE


_EXCLUSIVE_AS_SHARED = {"true": "none", "user": "user", "mcs": "mcs", "topo": "topo"}


def _shared(shared: object, exclusive: object) -> str | None:
    """squeue's ``shared`` (a string up to 23.02's data_parser, then a list of flags) and, where
    present, ``exclusive`` (23.02 to 24.05, a list: ``true``, ``user``, ``mcs``) as one word."""
    for word in slurm_words(shared, "shared"):
        if word:
            return word.lower()
    for word in slurm_words(exclusive, "exclusive"):
        if word.lower() in _EXCLUSIVE_AS_SHARED:
            return _EXCLUSIVE_AS_SHARED[word.lower()]
    return None


def job_from_squeue(record: Mapping[str, Any], producer: Producer) -> Job:
    """One squeue job record (JOB_INFO) of any version."""
    get = record.get
    values: dict[str, Any] = {"job_id": _job_id(record), "source": "squeue"}
    for out, key in _SQUEUE_TEXT:
        value = get(key)
        values[out] = (value or None) if type(value) is str else (slurm_str(value, key) or None)
    for out, key in _SQUEUE_STR:
        value = get(key)
        values[out] = value if type(value) is str else slurm_str(value, key)
    for out, key in _SQUEUE_INT:
        value = get(key)
        values[out] = value if type(value) is int and 0 <= value < _NO_VAL else slurm_int(
            value, key
        )
    for out, key in _SQUEUE_TIME:
        value = get(key)
        values[out] = (value or None) if type(value) is int and 0 <= value < _NO_VAL else (
            slurm_time(value, key)
        )
    state, flags = job_state(get("job_state"), "job_state")
    array_job_id = _optional_id(get("array_job_id"), "array_job_id")
    het_job_id = _optional_id(get("het_job_id"), "het_job_id")
    nodelist = "" if state is JobState.PENDING else slurm_str(get("nodes"), "nodes")
    hosts = expand_hosts(nodelist, "nodes")
    gres = _gres_detail(get("gres_detail"), "gres_detail")
    ended = state.finished or state is JobState.COMPLETING
    values.update({
        "state": state,
        "flags": flags,
        "reason": _reason(get("state_reason"), "state_reason"),
        "array_job_id": array_job_id,
        "array_task_id": (
            slurm_int(get("array_task_id"), "array_task_id") if array_job_id else None
        ),
        "het_job_id": het_job_id,
        "het_job_offset": (
            slurm_int(get("het_job_offset"), "het_job_offset") if het_job_id else None
        ),
        # A pending job's start and a running job's end are Slurm's estimates, not facts.
        "start_time": (
            slurm_time(get("start_time"), "start_time") if state is not JobState.PENDING else None
        ),
        "end_time": slurm_time(get("end_time"), "end_time") if ended else None,
        "nodelist": nodelist,
        "hosts": hosts,
        "allocations": _with_gpus(
            _allocations(get("job_resources"), hosts, "job_resources"), hosts, gres, ""
        ),
        "gres_detail": gres,
        "shared": _shared(get("shared"), get("exclusive")),
        "tres_requested": parse_tres_string(get("tres_req_str"), "tres_req_str"),
        "tres_allocated": parse_tres_string(get("tres_alloc_str"), "tres_alloc_str"),
        "exit_code": exit_code(get("exit_code"), state, "exit_code"),
        "restart_count": slurm_int(get("restart_cnt"), "restart_cnt", bits=16) or 0,
    })
    return Job.from_fields(values)


def _mapping(record: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = record.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SlurmFormatError(key, value, "expected an object")
    return value


def job_from_sacct(record: Mapping[str, Any], producer: Producer) -> Job:
    """One sacct job record (slurmdb JOB) of any version."""
    state_obj = _mapping(record, "state")
    state, flags = job_state(state_obj.get("current"), "state.current")
    if flags == ("REQUEUED",):
        # sacct's record of a run that ended by requeue; the job's next run is its own record.
        state = JobState.REQUEUED
    times = _mapping(record, "time")
    array = _mapping(record, "array")
    het = _mapping(record, "het")
    comment = _mapping(record, "comment")
    tres = _mapping(record, "tres")
    required = _mapping(record, "required")

    def when(key: str) -> int | None:
        return slurm_time(times.get(key), f"time.{key}")

    start, end = when("start"), when("end")
    if quirks_of(producer).sacct_start_is_eligible:
        elapsed = slurm_int(times.get("elapsed"), "time.elapsed")
        suspended = slurm_int(times.get("suspended"), "time.suspended") or 0
        start = end - elapsed - suspended if end and elapsed is not None else None
        if start is not None and start <= 0:
            start = None
    if state is JobState.PENDING:
        start = None
    array_job_id = _optional_id(array.get("job_id"), "array.job_id")
    het_job_id = _optional_id(het.get("job_id"), "het.job_id")
    allocated = parse_tres_list(tres.get("allocated"), "tres.allocated")
    nodelist = slurm_str(record.get("nodes"), "nodes")
    hosts = expand_hosts(nodelist, "nodes")
    cpus = allocated.get("cpu")
    if cpus is None:
        cpus = slurm_int(required.get("CPUs", required.get("cpus")), "required.CPUs")
    return Job.from_fields({
        "job_id": _job_id(record),
        "name": slurm_str(record.get("name"), "name"),
        "state": state,
        "flags": flags,
        "reason": _reason(state_obj.get("reason"), "state.reason"),
        "cluster": _text(record, "cluster"),
        "user": _text(record, "user"),
        "account": _text(record, "account"),
        "partition": _text(record, "partition"),
        "qos": _text(record, "qos"),
        "array_job_id": array_job_id,
        "array_task_id": (
            slurm_int(array.get("task_id"), "array.task_id") if array_job_id else None
        ),
        "array_tasks_pending": slurm_str(array.get("task"), "array.task") or None,
        "het_job_id": het_job_id,
        "het_job_offset": (
            slurm_int(het.get("job_offset"), "het.job_offset") if het_job_id else None
        ),
        "submit_time": when("submission"),
        "eligible_time": when("eligible"),
        "start_time": start,
        "end_time": end if state.finished else None,
        "time_limit": slurm_int(times.get("limit"), "time.limit"),
        "node_count": slurm_int(record.get("allocation_nodes"), "allocation_nodes")
        or (len(hosts) or None),
        "cpus": cpus,
        "nodelist": nodelist if hosts else "",
        "hosts": hosts,
        "allocations": tuple(NodeAllocation(hostname=h) for h in hosts),
        "tres_requested": parse_tres_list(tres.get("requested"), "tres.requested"),
        "tres_allocated": allocated,
        "comment": slurm_str(comment.get("job"), "comment.job"),
        "admin_comment": slurm_str(comment.get("administrator"), "comment.administrator"),
        "system_comment": slurm_str(comment.get("system"), "comment.system"),
        "exit_code": exit_code(record.get("exit_code"), state, "exit_code"),
        "work_dir": _text(record, "working_directory"),
        "restart_count": slurm_int(record.get("restart_cnt"), "restart_cnt", bits=16) or 0,
        "source": "sacct",
    })
