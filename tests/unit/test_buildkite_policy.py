"""Buildkite agent query rules -> checked sbatch options (connectors/buildkite/policy.py)."""

from __future__ import annotations

import jsonschema
import pytest

from slurm_sync.config import combined_schema
from slurm_sync.connectors.buildkite.policy import (
    ALIASES,
    CONFLICTS,
    DEFAULT_ALLOWED,
    FLAGS,
    MAX_VALUE_LEN,
    NEVER,
    POLICY_SCHEMA,
    QueuePolicy,
    Refused,
    Resolved,
    resolve,
)
from slurm_sync.errors import ConfigError

QUEUE = QueuePolicy(
    defaults={"partition": "cpu", "time": "1:05:00", "account": "ci-proj", "reservation": "ci"}
)
LOGS = "/srv/ci/logs"
WITH_OUTPUT = QueuePolicy(allowed=DEFAULT_ALLOWED | {"output", "error"}, output_roots=(LOGS,))


def ok(rules: list[str], policy: QueuePolicy = QUEUE) -> Resolved:
    got = resolve(rules, policy)
    assert isinstance(got, Resolved), got
    return got


def refused(rules: list[str], policy: QueuePolicy = QUEUE) -> str:
    got = resolve(rules, policy)
    assert isinstance(got, Refused), got
    return got.reason


def pipeline_only(got: Resolved, policy: QueuePolicy = QUEUE) -> set[str]:
    """The options that are not a queue default unchanged."""
    defaults = {f"--{n}" if v is None else f"--{n}={v}" for n, v in policy.defaults.items()}
    return set(got.options) - defaults


# --------------------------------------------------------------------------------- basics


def test_readme_examples() -> None:
    got = ok(["queue=slurm", "slurm_tasks_per_node=2", "slurm_exclusive=true"])
    assert pipeline_only(got) == {"--ntasks-per-node=2", "--exclusive"}
    assert got.tags == ("queue=slurm",)


def test_defaults_applied_sorted() -> None:
    got = ok(["queue=slurm"])
    assert got.options == (
        "--account=ci-proj",
        "--partition=cpu",
        "--reservation=ci",
        "--time=1:05:00",
    )
    assert got.shape == got.options


@pytest.mark.parametrize("rule", ["slurm_exclusive", "slurm_exclusive=", "slurm_exclusive=true"])
def test_bare_flag_spellings(rule: str) -> None:
    assert pipeline_only(ok([rule])) == {"--exclusive"}


def test_flag_with_its_optional_value() -> None:
    assert pipeline_only(ok(["slurm_exclusive=user"])) == {"--exclusive=user"}
    assert "user, mcs or topo" in refused(["slurm_exclusive=yes"])


def test_pipeline_overrides_default() -> None:
    got = ok(["slurm_partition=gpu", "slurm_time=30"])
    assert "--partition=gpu" in got.options and "--partition=cpu" not in got.options
    assert "--time=30" in got.options and "--time=1:05:00" not in got.options


def test_false_drops_a_default() -> None:
    got = ok(["slurm_reservation=false"])
    assert not any(o.startswith("--reservation") for o in got.options)
    assert "--partition=cpu" in got.options


def test_false_without_a_default_changes_nothing() -> None:
    assert ok(["slurm_exclusive=false"]).options == ok([]).options


def test_false_cannot_drop_a_default_the_pipeline_may_not_set() -> None:
    reason = refused(["slurm_account=false"])
    assert reason.startswith("slurm_account=false: --account is not among")


def test_tags_keep_their_order_and_are_not_options() -> None:
    got = ok(["os=linux", "queue=slurm", "slurm_mem=4G", "arch=x86_64"])
    assert got.tags == ("os=linux", "queue=slurm", "arch=x86_64")
    assert "--mem=4G" in got.options and not any("os" in o for o in got.options)


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ("os=linux,mac", "split the agent's --tags"),
        ("os=linux\nrm -rf ~", "control character"),
        ("os=$(id)", "key=value"),
        ("os=a b", "key=value"),
        ("os=" + "x" * MAX_VALUE_LEN, "longer than"),
    ],
)
def test_bad_tags_refused(rule: str, words: str) -> None:
    reason = refused(["queue=slurm", rule])
    assert words in reason
    assert "\n" not in reason


# --------------------------------------------------------------------------- allow-list, NEVER


def test_allow_list_enforced() -> None:
    assert "not among the options" in refused(["slurm_account=other-proj"])
    assert "not among the options" in refused(["slurm_begin=now+1hour"])
    extended = QueuePolicy(allowed=DEFAULT_ALLOWED | {"begin", "account"})
    assert set(ok(["slurm_begin=now+1hour", "slurm_account=p"], extended).options) == {
        "--begin=now+1hour",
        "--account=p",
    }


def test_site_allow_list_replaces_the_default_one() -> None:
    narrow = QueuePolicy(allowed=frozenset({"time"}))
    assert ok(["slurm_time=10"], narrow).options == ("--time=10",)
    assert "not among the options" in refused(["slurm_partition=gpu"], narrow)


@pytest.mark.parametrize("name", sorted(NEVER))
@pytest.mark.parametrize("value", ["x", "true", "false", ""])
def test_never_options_refused_even_when_allowed(name: str, value: str) -> None:
    reckless = QueuePolicy(allowed=DEFAULT_ALLOWED | NEVER)
    rule = f"slurm_{name.replace('-', '_')}={value}"
    reason = refused(["queue=slurm", rule], reckless)
    assert reason.startswith(f"{rule}: ")
    if len(name) == 1:
        assert "short options" in reason
    else:
        assert f"--{name} is never taken from a pipeline" in reason


def test_reason_names_the_rule() -> None:
    reason = refused(["queue=slurm", "slurm_uid=0"])
    assert reason.startswith("slurm_uid=0: --uid is never taken from a pipeline")


@pytest.mark.parametrize(("short", "full"), [("exp", "export"), ("wr", "wrap"), ("ui", "uid")])
def test_abbreviations_of_never_options_refused(short: str, full: str) -> None:
    reckless = QueuePolicy(allowed=DEFAULT_ALLOWED | {short})
    reason = refused([f"slurm_{short}=x"], reckless)
    assert f"abbreviation of --{full}" in reason


@pytest.mark.parametrize("rule", ["slurm_N=2", "slurm_c=4", "slurm_D=/tmp"])
def test_short_options_refused(rule: str) -> None:
    reckless = QueuePolicy(allowed=DEFAULT_ALLOWED | {"N", "c", "D"})
    assert "short options" in refused([rule], reckless)


@pytest.mark.parametrize(
    "rule", ["SLURM_MEM=4G", "Slurm_mem=4G", "slurm_=x", "slurm_mem__per_cpu=1G", "slurm_mem!=4G"]
)
def test_malformed_option_names_refused_not_taken_as_tags(rule: str) -> None:
    reason = refused([rule])
    assert reason.startswith(rule)


def test_default_allow_list_is_safe() -> None:
    for name in DEFAULT_ALLOWED:
        assert name not in NEVER
        assert not any(n.startswith(name) for n in NEVER), name  # no getopt abbreviation
    # the account is the queue's choice, and the logs are the connector's
    assert not {"account", "output", "error"} & DEFAULT_ALLOWED


# ------------------------------------------------------------------------------------ values


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ("slurm_partition=gpu\n#SBATCH --uid=0", "control character"),
        ("slurm_partition=gpu\r", "control character"),
        ("slurm_partition=gpu\x00", "control character"),
        ("slurm_partition=gpu\tx", "control character"),
        ("slurm_partition=gpu;id", "must be names"),
        ("slurm_partition=$(id)", "must be names"),
        ("slurm_partition=`id`", "must be names"),
        ("slurm_partition=gpu|id", "must be names"),
        ("slurm_partition=gpu id", "must be names"),
        ("slurm_qos=a'b", "must be a name"),
        ('slurm_qos=a"b', "must be a name"),
        ("slurm_gres=gpu:1>x", "GRES"),
        ("slurm_constraint=a100;id", "features"),
        ("slurm_constraint=a&$(id)", "features"),
        ("slurm_partition=-x", "starts with '-'"),
        ("slurm_partition=--uid=0", "starts with '-'"),
        ("slurm_mem=-1", "starts with '-'"),
        ("slurm_mem=4GB", "a size"),
        ("slurm_mem=lots", "a size"),
        ("slurm_nodes=2x", "a number"),
        ("slurm_time=1h", "a time"),
        ("slurm_gpus=a100:two", "a count"),
        ("slurm_partition=" + "p" * (MAX_VALUE_LEN + 1), "characters long"),
    ],
)
def test_bad_values_refused(rule: str, words: str) -> None:
    reason = refused(["queue=slurm", rule])
    assert words in reason
    assert "\n" not in reason and "\r" not in reason and "\x00" not in reason
    assert len(reason) < 300


def test_refused_rule_is_escaped_not_echoed_raw() -> None:
    rule = "slurm_partition=gpu\n#SBATCH --uid=0"
    reason = refused([rule])
    assert reason.startswith(repr(rule))
    long_rule = "slurm_partition=" + "p" * 1000
    reason = refused([long_rule])
    assert long_rule not in reason and "(1016 characters)" in reason


@pytest.mark.parametrize(
    ("rule", "option"),
    [
        ("slurm_gres=gpu:a100:2", "--gres=gpu:a100:2"),
        ("slurm_gres=gpu:1,nvme:1", "--gres=gpu:1,nvme:1"),
        ("slurm_constraint=a100&ib", "--constraint=a100&ib"),
        ("slurm_constraint=[rack1*2&rack2*4]", "--constraint=[rack1*2&rack2*4]"),
        ("slurm_constraint=(a|b)&c", "--constraint=(a|b)&c"),
        ("slurm_mem=4G", "--mem=4G"),
        ("slurm_mem=4096", "--mem=4096"),
        ("slurm_time=2-00:00:00", "--time=2-00:00:00"),
        ("slurm_time_min=30", "--time-min=30"),
        ("slurm_nodes=2-4", "--nodes=2-4"),
        ("slurm_gpus_per_node=a100:2", "--gpus-per-node=a100:2"),
        ("slurm_signal=B:USR1@300", "--signal=B:USR1@300"),
        ("slurm_partition=gpu,gpu-long", "--partition=gpu,gpu-long"),
        ("slurm_cpus_per_task=8", "--cpus-per-task=8"),
    ],
)
def test_practical_values_taken(rule: str, option: str) -> None:
    assert option in ok([rule]).options


def test_option_that_needs_a_value_is_never_bare() -> None:
    # a bare --partition would make sbatch take the next argv element as the partition
    for rule in ("slurm_partition", "slurm_partition=", "slurm_partition=true", "slurm_mem"):
        assert "needs a value" in refused([rule])
    site = QueuePolicy(allowed=DEFAULT_ALLOWED | {"begin"})
    assert "needs a value" in refused(["slurm_begin"], site)


def test_option_that_takes_no_value_refuses_one() -> None:
    site = QueuePolicy(allowed=DEFAULT_ALLOWED | {"oversubscribe"})
    assert pipeline_only(ok(["slurm_oversubscribe"], site), site) == {"--oversubscribe"}
    assert "takes no value" in refused(["slurm_oversubscribe=yes"], site)
    assert {"exclusive", "oversubscribe", "requeue"} <= FLAGS and "partition" not in FLAGS


# ------------------------------------------------------------------------------ output paths


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (f"{LOGS}/%j.out", f"--output={LOGS}/%j.out"),
        (f"{LOGS}/build/slurm-%A_%a.log", f"--output={LOGS}/build/slurm-%A_%a.log"),
        (f"{LOGS}/./a//b.out", f"--output={LOGS}/a/b.out"),
        (f"/{LOGS}/a.out", f"--output={LOGS}/a.out"),  # a leading // is / on Linux
    ],
)
def test_output_inside_roots(value: str, want: str) -> None:
    assert ok([f"slurm_output={value}"], WITH_OUTPUT).options == (want,)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("/etc/cron.d/x", f"must be under {LOGS}"),
        (f"{LOGS}x/a.out", f"must be under {LOGS}"),  # a sibling that shares the prefix
        (LOGS, f"must be under {LOGS}"),  # the root itself is a directory
        (f"{LOGS}/../../../etc/x", "'..'"),
        (f"{LOGS}/a/../b.out", "'..'"),  # even inside: a symlink at a/ could lead out
        ("logs/a.out", "absolute path"),
        ("~/a.out", "absolute path"),
    ],
)
def test_output_outside_roots_refused(value: str, words: str) -> None:
    for name in ("output", "error"):
        reason = refused([f"slurm_{name}={value}"], WITH_OUTPUT)
        assert words in reason, reason


def test_output_refused_without_roots_or_allow_list() -> None:
    no_roots = QueuePolicy(allowed=DEFAULT_ALLOWED | {"output"})
    assert "no output_roots" in refused([f"slurm_output={LOGS}/a.out"], no_roots)
    assert "not among the options" in refused([f"slurm_output={LOGS}/a.out"])


@pytest.mark.parametrize("name", ["input", "chdir"])
def test_input_and_chdir_refused_even_under_roots(name: str) -> None:
    reckless = QueuePolicy(allowed=DEFAULT_ALLOWED | {name}, output_roots=(LOGS,))
    assert "never taken" in refused([f"slurm_{name}={LOGS}/x"], reckless)


# --------------------------------------------------------------------------------- conflicts

SITE = QueuePolicy(
    allowed=DEFAULT_ALLOWED | {"oversubscribe", "requeue", "no-requeue", "ntasks-per-gpu"}
)


@pytest.mark.parametrize(
    ("rules", "words"),
    [
        (["slurm_mem=4G", "slurm_mem_per_cpu=1G"], "--mem, --mem-per-cpu and --mem-per-gpu"),
        (["slurm_mem_per_gpu=8G", "slurm_mem=4G"], "--mem, --mem-per-cpu and --mem-per-gpu"),
        (["slurm_exclusive", "slurm_oversubscribe"], "--exclusive and --oversubscribe"),
        (["slurm_cpus_per_task=4", "slurm_cpus_per_gpu=8"], "--cpus-per-task and --cpus-per-gpu"),
        (["slurm_gres=gpu:a100:2", "slurm_gpus=2"], "GPUs are asked for twice"),
        (["slurm_gres=nvme:1,gpu:1", "slurm_gpus_per_node=1"], "GPUs are asked for twice"),
        (["slurm_requeue", "slurm_no_requeue"], "contradict"),
        (["slurm_ntasks_per_gpu=1", "slurm_tasks_per_node=2"], "--ntasks-per-gpu cannot"),
    ],
)
def test_conflicts_refused(rules: list[str], words: str) -> None:
    reason = refused(["queue=slurm", *rules], SITE)
    assert words in reason
    assert reason.startswith(f"{rules[0]} and {rules[1]}: ")


def test_gres_without_gpu_goes_with_gpus() -> None:
    got = ok(["slurm_gres=nvme:1", "slurm_gpus=2"])
    assert {"--gres=nvme:1", "--gpus=2"} <= set(got.options)


def test_pipeline_option_displaces_conflicting_defaults() -> None:
    policy = QueuePolicy(defaults={"mem": "4G", "gres": "gpu:1", "exclusive": None})
    got = ok(["slurm_mem_per_cpu=2G", "slurm_gpus_per_node=2"], policy)
    assert got.options == ("--exclusive", "--gpus-per-node=2", "--mem-per-cpu=2G")


def test_same_option_twice() -> None:
    assert ok(["slurm_mem=4G", "slurm_mem=4G"]).options == ok(["slurm_mem=4G"]).options
    reason = refused(["slurm_mem=4G", "slurm_mem=8G"])
    assert reason == "slurm_mem=4G and slurm_mem=8G: --mem is given twice with different values"
    assert "given twice" in refused(["slurm_mem=4G", "slurm_mem=false"])
    # an alias is the same option
    assert ALIASES["tasks-per-node"] == "ntasks-per-node"
    assert "given twice" in refused(["slurm_tasks_per_node=2", "slurm_ntasks_per_node=3"])
    same = ok(["slurm_tasks_per_node=2", "slurm_ntasks_per_node=2"])
    assert "--ntasks-per-node=2" in same.options


def test_conflict_table_sides_are_disjoint() -> None:
    for conflict in CONFLICTS:
        seen: set[str] = set()
        for side in conflict.sides:
            assert not side & seen
            seen |= side


# ----------------------------------------------------------------------------------- shapes


def test_same_options_in_any_order_same_shape() -> None:
    a = ok(["queue=slurm", "slurm_mem=4G", "slurm_exclusive", "slurm_gres=gpu:2", "os=linux"])
    b = ok(["os=linux", "slurm_gres=gpu:2", "slurm_exclusive=true", "queue=slurm", "slurm_mem=4G"])
    assert a.shape == b.shape
    assert {a.shape: "batch"}[b.shape] == "batch"  # hashable: usable to group by
    c = ok(["queue=slurm", "slurm_mem=8G", "slurm_exclusive", "slurm_gres=gpu:2"])
    assert c.shape != a.shape


def test_alias_spellings_batch_together() -> None:
    assert ok(["slurm_tasks_per_node=2"]).shape == ok(["slurm_ntasks_per_node=2"]).shape


def test_rules_must_be_a_sequence_of_strings() -> None:
    with pytest.raises(TypeError):
        resolve("queue=slurm", QUEUE)


# ----------------------------------------------------------------------------------- policy


def test_from_settings_full() -> None:
    policy = QueuePolicy.from_settings(
        {
            "defaults": {"partition": "gpu", "time": "1:05:00", "exclusive": None},
            "allowed": ["time", "mem", "tasks-per-node"],
            "output_roots": ["/srv/ci/logs/"],
        }
    )
    assert dict(policy.defaults) == {"partition": "gpu", "time": "1:05:00", "exclusive": None}
    assert policy.allowed == frozenset({"time", "mem", "tasks-per-node"})
    assert policy.output_roots == ("/srv/ci/logs",)
    assert ok(["slurm_ntasks_per_node=2"], policy).options == (
        "--exclusive",
        "--ntasks-per-node=2",
        "--partition=gpu",
        "--time=1:05:00",
    )


def test_from_settings_empty_uses_built_in_allow_list() -> None:
    policy = QueuePolicy.from_settings({})
    assert policy.allowed == DEFAULT_ALLOWED
    assert policy.defaults == {} and policy.output_roots == ()


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"allowed": ["mem", "uid"]}, "--uid is never taken"),
        ({"allowed": ["exp"]}, "abbreviation of --export"),
        ({"defaults": {"array": "1-3"}}, "set by the connector"),
        ({"defaults": {"job-name": "x"}}, "set by the connector"),
        ({"defaults": {"partition": "gpu\nx"}}, "control character"),
        ({"defaults": {"time": ""}}, "queues.gpu.defaults.time"),
        ({"defaults": {"mem": "4G", "mem-per-cpu": "1G"}}, "mutually exclusive"),
        ({"defaults": {"tasks-per-node": "2", "ntasks-per-node": "2"}}, "already a default"),
        ({"defaults": {"partition": None}}, "needs a value"),
        ({"output_roots": ["logs"]}, "queues.gpu.output_roots.0"),
        ({"output_roots": ["/srv/../etc"]}, "'..'"),
        ({"queue": "gpu"}, "Additional properties"),
        ({"allowed": "mem"}, "is not of type 'array'"),
    ],
)
def test_from_settings_refuses_bad_config(settings: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        QueuePolicy.from_settings(settings, where="queues.gpu")
    assert words in str(info.value)
    assert str(info.value).startswith("queues.gpu")


def test_defaults_may_hold_operator_only_options() -> None:
    # the operator may set e.g. --export=NONE; a pipeline still cannot touch it
    policy = QueuePolicy.from_settings({"defaults": {"export": "NONE"}})
    assert ok([], policy).options == ("--export=NONE",)
    assert "never taken" in refused(["slurm_export=false"], policy)


def test_policy_schema_is_valid_and_embeds() -> None:
    jsonschema.Draft202012Validator.check_schema(POLICY_SCHEMA)
    fragment = {
        "type": "object",
        "properties": {"queues": {"type": "object", "additionalProperties": POLICY_SCHEMA}},
    }
    schema = combined_schema({"buildkite": fragment})
    validator = jsonschema.Draft202012Validator(schema)
    good = {"connectors": {"buildkite": {"queues": {"gpu": {"defaults": {"time": "10"}}}}}}
    bad: dict[str, object] = {"connectors": {"buildkite": {"queues": {"gpu": {"default": {}}}}}}
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors(bad)) != []


def test_policy_defaults_are_read_only() -> None:
    policy = QueuePolicy(defaults={"time": "10"})
    with pytest.raises(TypeError):
        policy.defaults["time"] = "20"  # type: ignore[index]
