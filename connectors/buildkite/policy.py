"""Which sbatch options a Buildkite job gets: its ``slurm_*`` agent query rules, checked against
a per-queue policy, on top of the queue's defaults. Pure functions; no I/O.

    >>> policy = QueuePolicy(defaults={"partition": "cpu", "time": "1:05:00"})
    >>> resolve(["queue=slurm", "slurm_tasks_per_node=2", "slurm_exclusive=true"], policy)
    ... # doctest: +NORMALIZE_WHITESPACE
    Resolved(options=('--exclusive', '--ntasks-per-node=2', '--partition=cpu', '--time=1:05:00'),
             tags=('queue=slurm',))
    >>> resolve(["queue=slurm", "slurm_uid=0"], policy)
    Refused(reason='slurm_uid=0: --uid is never taken from a pipeline (it picks whose job this is)')

How a rule becomes an option (CliMA/slurm-buildkite's convention): ``slurm_<name>=<value>``
gives ``--<name>=<value>`` with every ``_`` of the name turned into ``-``; an empty value, no
``=`` at all, or ``true`` gives a bare ``--<name>``; ``false`` removes the queue's default of
that option (and changes nothing when there is none). Rules without the ``slurm_`` prefix
(``queue=…``, ``os=…``; a prefix in another case, ``SLURM_``, is refused rather than taken
for a tag) are not options: they come back as :attr:`Resolved.tags`, in order.
A pipeline's option replaces the queue's default of the same name, and also the defaults it
cannot be combined with (see :data:`CONFLICTS`): ``slurm_mem_per_cpu=2G`` drops a default
``--mem``. The result is sorted, so jobs asking the same thing in any order get the same
:attr:`Resolved.shape` and can go out in one array job.

Threat model. Pipelines are not trusted: anyone who can open a pull request may write agent
query rules, and the connector runs ``sbatch`` as a service account (or as root). Options are
handed to sbatch as argv elements, never through a shell, and may also be written as
``#SBATCH`` lines of a generated batch script. So the risks are:

* options that change who the job runs as, what runs, what environment or files it gets, or
  how the connector's own sbatch call behaves: :data:`NEVER` lists them, and no allow-list
  setting lets a pipeline set them;
* option injection: a bare ``--opt`` of an option that needs a value makes sbatch take the
  *next* argv element as its value, and a value starting with ``-`` may be read as an option;
  so only options known to take no value (:data:`FLAGS`) may be bare, every value is joined
  to its name (``--opt=value``) and no value may start with ``-``;
* getopt_long abbreviations: sbatch reads ``--exp=ALL`` as ``--export=ALL``, so a name that
  abbreviates a :data:`NEVER` option is refused like the option itself;
* text that reaches a script: no value or tag may hold a newline, carriage return, NUL or
  other control character, and each option's value must match a strict pattern of the
  characters that option needs (:data:`VALUE_RULES`); outside ``--constraint``, whose syntax
  uses ``& | ( ) [ ] *``, no shell metacharacter passes. Tags may hold ``*`` (a Buildkite
  wildcard), so a caller must still quote tags (or pass them as argv), never paste them into
  shell code;
* overlong values (at most :data:`MAX_VALUE_LEN` characters each);
* files: ``--output``/``--error`` may point only under the queue's ``output_roots``;
  ``--input`` and ``--chdir`` are never taken.

What it does not do: it cannot see symlinks (no I/O), so ``output_roots`` must not be
writable by the CI jobs themselves if links there matter; it does not cap amounts (nodes,
time, GPUs): Slurm's partition, QOS and association limits do; and whether the service
account may use a partition, QOS or reservation is Slurm's check, not this module's.

A refused job gets :class:`Refused` with a reason that names the rule and what is wrong; a rule
that is long or holds control characters is shown shortened and escaped, never raw.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Union

import jsonschema

from slurm_sync.errors import ConfigError

__all__ = [
    "ALIASES",
    "CONFLICTS",
    "DEFAULT_ALLOWED",
    "FLAGS",
    "MAX_VALUE_LEN",
    "NEVER",
    "POLICY_SCHEMA",
    "PREFIX",
    "VALUE_RULES",
    "Conflict",
    "QueuePolicy",
    "Refused",
    "Resolved",
    "ValueRule",
    "resolve",
]

PREFIX = "slurm_"
"""Agent query rules whose key starts with this are sbatch options (another case is refused)."""

MAX_VALUE_LEN = 256
"""Longest value (and longest tag) taken from a pipeline."""

_SHOWN_LEN = 80

# --------------------------------------------------------------------------- never from a pipeline

_NEVER_GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    # Identity: with sbatch run as root these really submit as another user or group.
    ("it picks whose job this is", frozenset({"uid", "gid"})),
    # What runs: a command line instead of the connector's script, a container around it,
    # burst-buffer directives (their stage-in/out scripts run outside the job), and
    # prolog/epilog-like hooks (srun's; refused here too so no spelling slips through).
    (
        "it changes what runs",
        frozenset(
            {
                "wrap", "container", "container-id", "bb", "bbf",
                "prolog", "epilog", "task-prolog", "task-epilog",
            }
        ),
    ),
    # Environment: would carry the service account's environment (tokens) or limits into the
    # job, or load another user's login environment.
    (
        "it decides the job's environment",
        frozenset({"export", "export-file", "get-user-env", "propagate"}),
    ),
    # Files: the working directory is the connector's, and --input would read any file the
    # service account can read into the job. (--output/--error are checked against
    # output_roots instead.) "D" is -D, the short --chdir; every short option is refused anyway.
    ("it decides which files the job reads", frozenset({"chdir", "D", "input"})),
    # The connector's own: it batches jobs as arrays, names the jobs and keeps the Buildkite
    # job in the comment to find them again; ordering is Buildkite's (wait steps), and a
    # dependency on the shared job name (singleton) or on unrelated job ids would stall CI;
    # a held job never starts; the connector submits to one cluster.
    (
        "the connector sets it",
        frozenset(
            {
                "array", "job-name", "comment", "dependency", "kill-on-invalid-dep",
                "hold", "clusters", "cluster",
            }
        ),
    ),
    # The sbatch call itself: these change what sbatch prints or whether it submits at all,
    # and the connector reads the job id from its output.
    (
        "it changes how the connector's sbatch call behaves",
        frozenset(
            {"parsable", "wait", "test-only", "help", "usage", "version", "verbose", "quiet"}
        ),
    ),
    # Operator-only settings that take effect when sbatch runs as root, and mail to any
    # address the pipeline likes.
    (
        "it is for operators only",
        frozenset({"priority", "reboot", "mail-user"}),
    ),
)

NEVER: frozenset[str] = frozenset().union(*(names for _, names in _NEVER_GROUPS))
"""Options never taken from a pipeline, whatever the allow-list says (see the groups above)."""

_NEVER_WHY: dict[str, str] = {name: why for why, names in _NEVER_GROUPS for name in names}

_CONNECTOR_ONLY: frozenset[str] = frozenset(
    name for why, names in _NEVER_GROUPS for name in names
    if why in ("the connector sets it", "it changes how the connector's sbatch call behaves")
)
"""Options a queue's defaults may not set either: they would break the connector's own call.
(Other NEVER options, e.g. ``export=NONE`` or ``uid``, are an operator's choice.)"""

# ------------------------------------------------------------------------------ the allow-list

DEFAULT_ALLOWED: frozenset[str] = frozenset(
    {
        # where and how long
        "partition", "reservation", "qos", "time", "time-min", "signal",
        # how big
        "nodes", "ntasks", "ntasks-per-node", "cpus-per-task", "cpus-per-gpu",
        "mem", "mem-per-cpu", "mem-per-gpu",
        "gpus", "gpus-per-node", "gpus-per-task", "gres", "constraint", "exclusive",
    }
)
"""What a pipeline may set when a queue's policy does not say. Not ``account``: with one service
account shared by many projects, the account decides whose allocation pays and whose
fair-share suffers, so it is the queue's default, not the pipeline's pick. ``qos`` and
``reservation`` are in: Slurm only lets the service account use those it was granted, and
they are ordinary CI knobs (CliMA writes ``slurm_reservation=false``). ``--output``/``--error``
are out: the connector owns the logs; a site may allow them with ``output_roots``."""

ALIASES: Mapping[str, str] = MappingProxyType({"tasks-per-node": "ntasks-per-node"})
"""Other spellings sbatch accepts, turned into one name so that both batch together and are
checked (allow-list, conflicts, duplicates) as one option."""

# ------------------------------------------------------------------------------------ values


@dataclass(frozen=True)
class ValueRule:
    """What an option takes: ``arg`` is ``required``, ``optional`` or ``none`` (getopt's
    has_arg), ``pattern`` what a given value must match, ``expected`` the words for a reason."""

    arg: str
    pattern: re.Pattern[str] | None = None
    expected: str = ""


_WORD = r"[A-Za-z0-9_.-]+"
_NAMES = ValueRule("required", re.compile(rf"{_WORD}(?:,{_WORD})*"), "names (letters, digits, _.-)")
_NAME = ValueRule("required", re.compile(_WORD), "a name (letters, digits, _.-)")
_TIME = ValueRule(
    "required",
    re.compile(r"[0-9]+(?:-[0-9]+)?(?::[0-9]+){0,2}"),
    "a time like 60, 1:05:00 or 2-00:00:00",
)
_MEM = ValueRule("required", re.compile(r"[0-9]+[KMGTkmgt]?"), "a size like 4096, 500M or 4G")
_COUNT = ValueRule("required", re.compile(r"[0-9]+"), "a whole number")
_RANGE = ValueRule("required", re.compile(r"[0-9]+(?:-[0-9]+)?"), "a number or min-max")
_TYPED_COUNT = ValueRule(
    "required", re.compile(rf"(?:{_WORD}:)?[0-9]+"), "a count with an optional type, like a100:2"
)
_GRES = ValueRule(
    "required", re.compile(r"[A-Za-z0-9_.:-]+(?:,[A-Za-z0-9_.:-]+)*"), "GRES like gpu:a100:2"
)
_CONSTRAINT = ValueRule(
    "required",
    re.compile(r"[A-Za-z0-9_.,:&|()\[\]*-]+"),
    "features joined by & | , with [ ] ( ) and *count",
)
_SIGNAL = ValueRule(
    "required",
    re.compile(r"(?:[RB]{1,2}:)?[A-Za-z0-9]+(?:@[0-9]+)?"),
    "a signal like B:USR1@300",
)
_PATH = ValueRule("required", re.compile(r"/[A-Za-z0-9_.%/+@-]+"), "an absolute path")
_GENERIC = ValueRule(
    "required", re.compile(r"[A-Za-z0-9_.,:=@+%/-]+"), "letters, digits and _.,:=@+%/-"
)
_NO_VALUE = ValueRule("none")

VALUE_RULES: Mapping[str, ValueRule] = MappingProxyType(
    {
        "partition": _NAMES, "reservation": _NAMES, "account": _NAME, "qos": _NAME,
        "wckey": _NAME, "time": _TIME, "time-min": _TIME,
        "nodes": _RANGE, "ntasks": _COUNT, "ntasks-per-node": _COUNT, "ntasks-per-gpu": _COUNT,
        "cpus-per-task": _COUNT, "cpus-per-gpu": _COUNT,
        "mem": _MEM, "mem-per-cpu": _MEM, "mem-per-gpu": _MEM, "tmp": _MEM,
        "gpus": _TYPED_COUNT, "gpus-per-node": _TYPED_COUNT, "gpus-per-task": _TYPED_COUNT,
        "gpus-per-socket": _TYPED_COUNT, "gres": _GRES,
        "constraint": _CONSTRAINT, "signal": _SIGNAL, "output": _PATH, "error": _PATH,
        "exclusive": ValueRule("optional", re.compile(r"user|mcs|topo"), "user, mcs or topo"),
        "no-kill": ValueRule("optional", re.compile(r"off"), "off"),
        "oversubscribe": _NO_VALUE, "contiguous": _NO_VALUE, "overcommit": _NO_VALUE,
        "requeue": _NO_VALUE, "no-requeue": _NO_VALUE, "spread-job": _NO_VALUE,
        "use-min-nodes": _NO_VALUE,
    }
)
"""Value checks per option; an option not listed (one a site adds to its allow-list) needs a
value of letters, digits and ``_.,:=@+%/-``."""

FLAGS: frozenset[str] = frozenset(n for n, r in VALUE_RULES.items() if r.arg != "required")
"""Options that may be bare. Any other bare option is refused: sbatch would take the next
argv element as its value."""

_PATH_OPTIONS = frozenset({"output", "error"})

# --------------------------------------------------------------------------------- conflicts


@dataclass(frozen=True)
class Conflict:
    """At most one of ``sides`` may be asked for. A side holds option names, or ``gres=gpu``
    for a ``--gres`` that names ``gpu``."""

    sides: tuple[frozenset[str], ...]
    why: str


_GRES_GPU = "gres=gpu"

CONFLICTS: tuple[Conflict, ...] = (
    Conflict(
        (frozenset({"mem"}), frozenset({"mem-per-cpu"}), frozenset({"mem-per-gpu"})),
        "--mem, --mem-per-cpu and --mem-per-gpu are mutually exclusive (sbatch refuses them)",
    ),
    Conflict(
        (frozenset({"exclusive"}), frozenset({"oversubscribe"})),
        "--exclusive and --oversubscribe are mutually exclusive (sbatch refuses them)",
    ),
    Conflict(
        (frozenset({"cpus-per-task"}), frozenset({"cpus-per-gpu"})),
        "--cpus-per-task and --cpus-per-gpu are mutually exclusive (sbatch refuses them)",
    ),
    Conflict(
        (
            frozenset({"ntasks-per-gpu"}),
            frozenset({"gpus-per-task", "gpus-per-socket", "ntasks-per-node"}),
        ),
        "--ntasks-per-gpu cannot be combined with --gpus-per-task, --gpus-per-socket or "
        "--ntasks-per-node (sbatch refuses them)",
    ),
    Conflict(
        (frozenset({_GRES_GPU}), frozenset({"gpus", "gpus-per-node", "gpus-per-task",
                                            "gpus-per-socket"})),
        "GPUs are asked for twice, by --gres=gpu and by --gpus*; use one",
    ),
    Conflict(
        (frozenset({"requeue"}), frozenset({"no-requeue"})),
        "--requeue and --no-requeue contradict each other",
    ),
)
"""Options that cannot go together. Between a pipeline's option and a queue default, the
pipeline's wins (the default is dropped); between two of a pipeline's, the job is refused;
between two defaults, the policy is a config error."""

# ------------------------------------------------------------------------------------ schema

_OPTION_NAME_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"

POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "defaults": {
            "type": "object",
            "description": (
                "sbatch options every job of the queue gets (name without dashes -> value; "
                "null for a bare flag), e.g. partition, time, account, reservation"
            ),
            "propertyNames": {"pattern": _OPTION_NAME_PATTERN},
            "additionalProperties": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": MAX_VALUE_LEN,
            },
        },
        "allowed": {
            "type": "array",
            "description": (
                "sbatch options a pipeline may set with slurm_* rules (replaces the built-in "
                "list); options that are never taken from a pipeline may not be listed"
            ),
            "items": {"type": "string", "pattern": _OPTION_NAME_PATTERN},
            "uniqueItems": True,
        },
        "output_roots": {
            "type": "array",
            "description": "absolute directories --output/--error may point into",
            "items": {"type": "string", "pattern": "^/"},
            "uniqueItems": True,
        },
    },
}
"""The JSON Schema (draft 2020-12) of one queue's policy settings, for the connector's schema."""

# ------------------------------------------------------------------------------------ policy


class _Refusal(Exception):
    """Internal: why a rule (or a policy setting) is not taken."""


def _no_defaults() -> Mapping[str, str | None]:
    return MappingProxyType({})


@dataclass(frozen=True)
class QueuePolicy:
    """One queue's defaults, allow-list and output roots. Checked when made: a bad default is a
    :class:`~sync.errors.ConfigError`. ``allowed`` may name :data:`NEVER` options (they stay
    refused); :meth:`from_settings` refuses such a config outright."""

    defaults: Mapping[str, str | None] = field(default_factory=_no_defaults)
    allowed: frozenset[str] = DEFAULT_ALLOWED
    output_roots: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        defaults: dict[str, str | None] = {}
        for name, value in self.defaults.items():
            where = f"defaults.{name}"
            canonical = ALIASES.get(name, name)
            try:
                _check_name(name)
            except _Refusal as exc:
                raise ConfigError(f"{where}: {exc}") from None
            if canonical in _CONNECTOR_ONLY:
                raise ConfigError(f"{where}: --{canonical} is set by the connector")
            if canonical in defaults:
                raise ConfigError(f"{where}: --{canonical} is already a default")
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{where}: must be a string, or null for a bare flag")
            if value == "":
                raise ConfigError(f"{where}: empty; use null for a bare flag")
            try:
                defaults[canonical] = _check_value(canonical, value, roots=None)
            except _Refusal as exc:
                raise ConfigError(f"{where}: {exc}") from None
        clash = _first_conflict({n: (v, None) for n, v in defaults.items()})
        if clash is not None:
            raise ConfigError(f"defaults: {clash}")
        object.__setattr__(self, "defaults", MappingProxyType(defaults))

        allowed: object = self.allowed
        if isinstance(allowed, str) or not all(isinstance(n, str) for n in self.allowed):
            raise ConfigError("allowed: must be a set of option names")
        object.__setattr__(self, "allowed", frozenset(self.allowed))

        roots: list[str] = []
        for i, root in enumerate(self.output_roots):
            if not isinstance(root, str) or not root.startswith("/"):
                raise ConfigError(f"output_roots.{i}: {root!r} is not an absolute path")
            if ".." in root.split("/"):
                raise ConfigError(f"output_roots.{i}: {root!r} contains '..'")
            roots.append(posixpath.normpath(root))
        object.__setattr__(self, "output_roots", tuple(roots))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], where: str = "") -> QueuePolicy:
        """The policy of one queue from its config object (:data:`POLICY_SCHEMA`); ``where``
        is its config path, for messages. A ConfigError names the key and what is wrong."""
        prefix = f"{where}." if where else ""
        errors = sorted(
            jsonschema.Draft202012Validator(POLICY_SCHEMA).iter_errors(settings),
            key=lambda e: list(e.absolute_path),
        )
        if errors:
            first = errors[0]
            path = ".".join(str(p) for p in first.absolute_path)
            raise ConfigError(f"{prefix}{path or '(policy)'}: {first.message}")
        allowed = settings.get("allowed")
        if allowed is None:
            allowed_set = DEFAULT_ALLOWED
        else:
            for name in allowed:
                problem = _never_problem(ALIASES.get(name, name))
                if problem is not None:
                    raise ConfigError(f"{prefix}allowed: {problem}")
            allowed_set = frozenset(allowed)
        try:
            return cls(
                defaults=dict(settings.get("defaults", {})),
                allowed=allowed_set,
                output_roots=tuple(settings.get("output_roots", ())),
            )
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{exc}") from None


# ---------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Resolved:
    """A job's checked sbatch options (sorted argv pieces such as ``--partition=gpu`` or
    ``--exclusive``) and its other agent query rules (``tags``, in their order)."""

    options: tuple[str, ...]
    tags: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[str, ...]:
        """The batching key: jobs with equal shapes can go out in one array job."""
        return self.options


@dataclass(frozen=True)
class Refused:
    """Why a job cannot be submitted, naming the rule; fit to report back to Buildkite."""

    reason: str


# ---------------------------------------------------------------------------------- resolve


@dataclass(frozen=True)
class _Ask:
    drop: bool
    value: str | None
    rule: str


_Entry = tuple[Union[str, None], Union[str, None]]  # (value or None for bare, rule or None)


def resolve(rules: Sequence[str], policy: QueuePolicy) -> Resolved | Refused:
    """The sbatch options of a job with these agent query rules under ``policy``, or why not.

    >>> print(resolve(["slurm_mem=4G", "slurm_mem_per_cpu=1G"], QueuePolicy()).reason)
    ... # doctest: +ELLIPSIS
    slurm_mem=4G and slurm_mem_per_cpu=1G: --mem, --mem-per-cpu and --mem-per-gpu are ...
    """
    if isinstance(rules, str):
        raise TypeError("rules must be a sequence of rule strings, not one string")
    tags: list[str] = []
    asked: dict[str, _Ask] = {}
    try:
        for rule in rules:
            if not isinstance(rule, str):
                raise _Refusal(f"{_show(repr(rule))}: an agent query rule must be a string")
            key, sep, raw = rule.partition("=")
            if key[: len(PREFIX)].lower() != PREFIX:
                tags.append(_check_tag(rule))
                continue
            if not key.startswith(PREFIX):
                raise _Refusal(f"{_show(rule)}: write the prefix in lowercase, as {PREFIX}")
            try:
                name, ask = _parse_option(rule, key[len(PREFIX):], sep, raw, policy)
            except _Refusal as exc:
                raise _Refusal(f"{_show(rule)}: {exc}") from None
            before = asked.get(name)
            if before is None:
                asked[name] = ask
            elif (before.drop, before.value) != (ask.drop, ask.value):
                raise _Refusal(
                    f"{_show(before.rule)} and {_show(rule)}: "
                    f"--{name} is given twice with different values"
                )
    except _Refusal as exc:
        return Refused(str(exc))

    merged: dict[str, _Entry] = {n: (v, None) for n, v in policy.defaults.items()}
    for name, ask in asked.items():
        if ask.drop:
            merged.pop(name, None)
            continue
        for other in _displaced(name, ask.value, merged):
            del merged[other]
        merged.pop(name, None)  # re-inserted, so that reasons list rules in their order
        merged[name] = (ask.value, ask.rule)
    clash = _first_conflict(merged)
    if clash is not None:
        return Refused(clash)
    options = sorted(f"--{n}" if v is None else f"--{n}={v}" for n, (v, _) in merged.items())
    return Resolved(options=tuple(options), tags=tuple(tags))


def _parse_option(
    rule: str, suffix: str, sep: str, raw: str, policy: QueuePolicy
) -> tuple[str, _Ask]:
    """The canonical name of a ``slurm_`` rule and what it asks for; _Refusal when refused."""
    name = suffix.replace("_", "-")
    _check_name(name)
    canonical = ALIASES.get(name, name)
    for candidate in dict.fromkeys((name, canonical)):
        problem = _never_problem(candidate)
        if problem is not None:
            raise _Refusal(problem)
    if canonical not in {ALIASES.get(n, n) for n in policy.allowed}:
        raise _Refusal(f"--{canonical} is not among the options this queue lets a pipeline set")
    if not sep or raw in ("", "true"):
        return canonical, _Ask(False, _check_value(canonical, None, policy.output_roots), rule)
    if raw == "false":
        return canonical, _Ask(True, None, rule)
    return canonical, _Ask(False, _check_value(canonical, raw, policy.output_roots), rule)


def _check_name(name: str) -> None:
    if not name:
        raise _Refusal("no option name after the slurm_ prefix")
    if len(name) == 1:
        raise _Refusal(
            f"short options (-{_show(name)}) are not taken; use the long name, e.g. slurm_nodes"
        )
    if len(name) > 64 or not re.fullmatch(_OPTION_NAME_PATTERN, name):
        raise _Refusal(
            f"{_show(name)} is not an sbatch option name (lowercase letters, digits, "
            "single dashes or underscores)"
        )


def _never_problem(name: str) -> str | None:
    """Why ``name`` is never taken from a pipeline, or None. A name that abbreviates a
    :data:`NEVER` option is refused too: sbatch's getopt_long would expand it."""
    if name in NEVER:
        return f"--{name} is never taken from a pipeline ({_NEVER_WHY[name]})"
    hidden = sorted(n for n in NEVER if n.startswith(name))
    if hidden:
        return (
            f"--{name} could be read by sbatch as an abbreviation of --{hidden[0]}, "
            f"which is never taken from a pipeline ({_NEVER_WHY[hidden[0]]})"
        )
    return None


def _check_value(name: str, value: str | None, roots: tuple[str, ...] | None) -> str | None:
    """The value to pass (None for a bare flag), or _Refusal. ``roots`` None skips the
    output-root check (queue defaults are the operator's)."""
    spec = VALUE_RULES.get(name, _GENERIC)
    if value is None:
        if spec.arg == "required":
            raise _Refusal(f"--{name} needs a value ({spec.expected})")
        return None
    if spec.arg == "none":
        raise _Refusal(f"--{name} takes no value; write it empty or as true")
    if len(value) > MAX_VALUE_LEN:
        raise _Refusal(f"the value is {len(value)} characters long, more than {MAX_VALUE_LEN}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _Refusal("the value holds a newline or another control character")
    if value.startswith("-"):
        raise _Refusal("the value starts with '-', which sbatch could read as an option")
    if spec.pattern is None or not spec.pattern.fullmatch(value):
        raise _Refusal(f"the value of --{name} must be {spec.expected}")
    if name in _PATH_OPTIONS and roots is not None:
        return _check_path(name, value, roots)
    return value


def _check_path(name: str, value: str, roots: tuple[str, ...]) -> str:
    if ".." in value.split("/"):
        raise _Refusal(f"--{name} may not contain '..'")
    path = "/" + posixpath.normpath(value).lstrip("/")  # Linux reads a leading // as /
    if not roots:
        raise _Refusal(f"this queue has no output_roots, so --{name} is not taken")
    if not any(path.startswith(root.rstrip("/") + "/") for root in roots):
        raise _Refusal(f"--{name} must be under {' or '.join(roots)}")
    return path


_TAG = re.compile(r"[A-Za-z0-9_.-]+(?:=[A-Za-z0-9_.:/@+=*-]*)?")


def _check_tag(rule: str) -> str:
    if len(rule) > MAX_VALUE_LEN:
        raise _Refusal(f"{_show(rule)}: the rule is longer than {MAX_VALUE_LEN} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in rule):
        raise _Refusal(f"{_show(rule)}: the rule holds a newline or another control character")
    if "," in rule:
        raise _Refusal(f"{_show(rule)}: a ',' would split the agent's --tags")
    if not _TAG.fullmatch(rule):
        raise _Refusal(
            f"{_show(rule)}: a tag must be key=value of letters, digits and _.:/@+=*-"
        )
    return rule


def _keys(name: str, value: str | None) -> frozenset[str]:
    """What an option counts as in :data:`CONFLICTS`."""
    if name == "gres" and value is not None and any(
        entry.split(":", 1)[0] == "gpu" for entry in value.split(",")
    ):
        return frozenset({name, _GRES_GPU})
    return frozenset({name})


def _displaced(name: str, value: str | None, merged: Mapping[str, _Entry]) -> list[str]:
    """The queue defaults in ``merged`` that a pipeline's ``--name=value`` cannot go with."""
    mine = _keys(name, value)
    out: list[str] = []
    for conflict in CONFLICTS:
        own = [side for side in conflict.sides if side & mine]
        if not own:
            continue
        for other, (other_value, rule) in merged.items():
            if rule is not None or other == name or other in out:
                continue
            theirs = _keys(other, other_value)
            if any(side & theirs for side in conflict.sides if side not in own):
                out.append(other)
    return out


def _first_conflict(merged: Mapping[str, _Entry]) -> str | None:
    """The first conflict among ``merged``, as a reason naming who asked; None if none."""
    for conflict in CONFLICTS:
        sides = [s for s in conflict.sides if any(s & _keys(n, v) for n, (v, _) in merged.items())]
        if len(sides) > 1:
            who = []
            for n, (value, rule) in merged.items():
                if not any(s & _keys(n, value) for s in sides):
                    continue
                shown = f"--{n}" if value is None else f"--{n}={value}"
                who.append(_show(rule) if rule is not None else f"the default {shown}")
            return f"{' and '.join(who)}: {conflict.why}"
    return None


def _show(text: str) -> str:
    """``text`` as is when short and plain printable ASCII; otherwise escaped and shortened."""
    if len(text) <= _SHOWN_LEN and text.isascii() and text.isprintable():
        return text
    shown = repr(text[:_SHOWN_LEN])
    if len(text) > _SHOWN_LEN:
        shown += f"... ({len(text)} characters)"
    return shown
