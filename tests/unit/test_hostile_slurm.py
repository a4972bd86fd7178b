"""Broken or hostile Slurm output costs one skipped record with its reason or one SlurmError for
the document: never another exception, a hang or unbounded memory (issue 12)."""

from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.cli import main
from slurm_sync.errors import SlurmError, SlurmFormatError
from slurm_sync.slurm.gres import MAX_GPU_INDICES, MAX_HOSTS, expand_hosts, gpu_indices
from slurm_sync.slurm.model import NodeAllocation, NodeTopology
from slurm_sync.slurm.parse import ParseResult, parse_sacct, parse_squeue, resolve_cpu_ids
from slurm_sync.slurm.query import parse_version

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "slurm"
SQUEUE = FIXTURES / "24.11" / "squeue-running.json"
SACCT = FIXTURES / "24.11" / "sacct.json"
SLEEPER, GPU2 = 2, 3  # running jobs of the 24.11 capture


def _doc(path: Path = SQUEUE) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _with(index: int, **fields: Any) -> str:
    doc = _doc()
    doc["jobs"][index].update(fields)
    return json.dumps(doc)


def _skipped_only(result: ParseResult, index: int, words: str) -> None:
    assert [s.index for s in result.skipped] == [index]
    assert words in result.skipped[0].reason
    assert len(result.jobs) == len(_doc()["jobs"]) - 1


# --- the document ----------------------------------------------------------------------------


def test_nesting_thousands_deep_is_one_error() -> None:
    text = '{"meta": {}, "jobs": [' + "[" * 5000 + "]" * 5000 + "], \"errors\": []}"
    with pytest.raises(SlurmFormatError, match="nested too deep"):
        parse_squeue(text)


def test_nesting_just_below_the_decoders_limit_skips_the_record() -> None:
    nested = "[" * 900 + "]" * 900
    text = '{"jobs": [{"job_id": 1, "name": ' + nested + "}], \"errors\": []}"
    result = parse_squeue(text)
    assert [s.index for s in result.skipped] == [0] and not result.jobs


@pytest.mark.parametrize("key", ["1", "[1]", '{"a": 1}', "null"])
def test_a_key_that_is_not_a_string_is_one_error(key: str) -> None:
    with pytest.raises(SlurmFormatError, match="expected a string key"):
        parse_squeue('{"jobs": [], "errors": [], ' + key + ": 2}")


def test_an_integer_of_thousands_of_digits_is_one_error() -> None:
    text = json.dumps(_doc()).replace('"job_id": 3,', '"job_id": 1' + "0" * 4400 + ",", 1)
    with pytest.raises(SlurmFormatError, match="more than 4300 digits"):
        parse_squeue(text)


def test_an_integer_beyond_64_bits_skips_its_record() -> None:
    text = json.dumps(_doc()).replace('"job_id": 3,', '"job_id": 1' + "0" * 4000 + ",", 1)
    result = parse_squeue(text)
    _skipped_only(result, SLEEPER, "beyond 64 bits")


@pytest.mark.parametrize("constant", ["Infinity", "-Infinity", "NaN"])
def test_nan_and_infinity_are_refused(constant: str) -> None:
    version = json.dumps(_doc()).replace('"major": "24"', f'"major": {constant}', 1)
    with pytest.raises(SlurmFormatError, match=f"{constant.lstrip('-')} is not a number"):
        parse_squeue(version)
    tres = SACCT.read_text(encoding="utf-8").replace('"count": 4000', f'"count": {constant}', 1)
    assert tres != SACCT.read_text(encoding="utf-8")
    with pytest.raises(SlurmFormatError):
        parse_sacct(tres)


def test_a_float_too_large_for_an_integer_skips_its_record() -> None:
    result = parse_squeue(_with(SLEEPER, cpus={"set": True, "infinite": False, "number": 1e300}))
    _skipped_only(result, SLEEPER, "beyond 64 bits")
    result = parse_squeue(_with(SLEEPER, tres_alloc_str="mem=" + "9" * 400 + ".5K"))
    _skipped_only(result, SLEEPER, "tres_alloc_str")


@pytest.mark.parametrize("release", ["2\u00b2.05", "\u0662\u0664.11.1", "24.11.\U0001d7e0"])
def test_a_release_with_non_ascii_digits_is_read_as_ascii_only(release: str) -> None:
    doc = _doc()
    doc["meta"]["slurm"] = {"release": release, "cluster": "lab2411"}
    result = parse_squeue(json.dumps(doc))
    assert result.producer.release == release and len(result.jobs) == len(doc["jobs"])
    assert all(0 <= part < 100 for part in result.producer.version)


def test_a_version_part_that_is_not_a_number_falls_back_to_the_release() -> None:
    doc = _doc()
    doc["meta"]["slurm"]["version"]["major"] = "\u0662\u0664"
    assert parse_squeue(json.dumps(doc)).producer.version == (24, 11, 5)


def test_errors_then_an_empty_errors_key_is_still_an_error() -> None:
    text = json.dumps(_doc())
    head, tail = text.split('"errors": []', 1)
    broken = head + '"errors": [{"error": "Unable to contact slurm controller", ' \
        '"error_number": 1007}], "errors": []' + tail
    with pytest.raises(SlurmError, match="Unable to contact slurm controller"):
        parse_squeue(broken)


@pytest.mark.parametrize("after", ["garbage", "{}", '{"jobs": []}', "\n]"])
def test_text_after_the_document_is_an_error(after: str) -> None:
    with pytest.raises(SlurmFormatError, match="text after the JSON document"):
        parse_squeue(SQUEUE.read_text(encoding="utf-8") + after)
    assert parse_squeue(SQUEUE.read_text(encoding="utf-8") + " \n\t").jobs


# --- what one record may ask for ---------------------------------------------------------------


def test_a_gres_range_of_billions_skips_its_record_at_once() -> None:
    started = time.monotonic()
    result = parse_squeue(_with(GPU2, gres_detail=["gpu:a100:2(IDX:0-4000000000)"]))
    assert time.monotonic() - started < 5
    _skipped_only(result, GPU2, f"more than {MAX_GPU_INDICES} GRES indices")
    with pytest.raises(SlurmFormatError):
        gpu_indices("gpu:1(IDX:" + ",".join(f"0-{MAX_GPU_INDICES}" for _ in range(3)) + ")")
    assert len(gpu_indices(f"gpu:1(IDX:0-{MAX_GPU_INDICES - 1})")) == MAX_GPU_INDICES


@pytest.mark.parametrize("nodes", [
    "n[0-999999999]", "n[0-60000],m[0-60000]", "r[0-999]n[0-999]", "a[1]" * 2000,
    "n[" + "9" * 30 + "-" + "9" * 31 + "]",
])
def test_a_host_list_asking_for_too_many_hosts_skips_its_record(nodes: str) -> None:
    started = time.monotonic()
    result = parse_squeue(_with(SLEEPER, nodes=nodes))
    assert time.monotonic() - started < 5
    _skipped_only(result, SLEEPER, "squeue.jobs[2].nodes")


def test_host_lists_up_to_the_bound_still_expand() -> None:
    assert len(expand_hosts(f"n[1-{MAX_HOSTS}]")) == MAX_HOSTS
    assert expand_hosts("r[1-2]n[01-02]") == ("r1n01", "r1n02", "r2n01", "r2n02")


def test_many_records_cannot_together_name_unbounded_hosts() -> None:
    record = {"job_id": 1, "job_state": "RUNNING", "nodes": f"n[1-{MAX_HOSTS}]"}
    text = json.dumps({"jobs": [dict(record, job_id=i) for i in range(1, 13)], "errors": []})
    result = parse_squeue(text)
    assert 0 < len(result.jobs) <= 10 and result.skipped
    assert "names more than 1000000 hosts" in result.skipped[0].reason


def test_a_lone_surrogate_in_a_name_is_read_as_a_replacement_character() -> None:
    text = json.dumps(_doc()).replace('"name": "sleeper"', '"name": "a\\ud800b\\udc00"', 1)
    job = next(j for j in parse_squeue(text).jobs if j.job_id == 3)
    assert job.name == "a\ufffdb\ufffd"
    json.dumps(job.to_dict(), ensure_ascii=False).encode("utf-8")


def test_surrogate_pairs_and_escaped_backslashes_are_kept() -> None:
    name = "\\\\ud800 \\ud83d\\ude00 \\\\\\ud800"  # \\ud800: a backslash and 'ud800' text
    text = json.dumps(_doc()).replace('"name": "sleeper"', f'"name": "{name}"', 1)
    job = next(j for j in parse_squeue(text).jobs if j.job_id == 3)
    assert job.name == "\\ud800 \U0001f600 \\\ufffd"


def test_raw_surrogates_in_a_str_document_are_replaced() -> None:
    text = json.dumps(_doc(), ensure_ascii=False).replace('"sleeper"', '"s\ud800"', 1)
    job = next(j for j in parse_squeue(text).jobs if j.job_id == 3)
    assert job.name == "s\ufffd"


@pytest.mark.parametrize("when", [10**15, 253402300800, 2**62])
def test_a_start_time_beyond_the_year_9999_skips_its_record(when: int) -> None:
    result = parse_squeue(_with(SLEEPER, start_time={"set": True, "infinite": False,
                                                     "number": when}))
    _skipped_only(result, SLEEPER, "after the year 9999")
    sacct = _doc(SACCT)
    sacct["jobs"][0]["time"]["submission"] = when
    assert "time.submission" in parse_sacct(json.dumps(sacct)).skipped[0].reason


def test_a_skipped_records_job_id_is_never_a_producers_object() -> None:
    nested = {"a": [[[1]]] * 10}
    result = parse_squeue(_with(SLEEPER, job_id=nested))
    assert result.skipped[0].job_id is None
    result = parse_squeue(_with(SLEEPER, job_id={"set": True, "number": 3}, cpus="x"))
    assert result.skipped[0].job_id == 3


def test_a_node_without_cores_per_socket_leaves_cpu_ids_unknown() -> None:
    job = parse_squeue(SQUEUE.read_text(encoding="utf-8")).jobs[0]
    job = type(job)(job_id=1, allocations=(NodeAllocation("n1", cores=((0, 1), (1, 1))),))
    (out,) = resolve_cpu_ids([job], {"n1": NodeTopology(2, 0)})
    assert out.allocations[0].cpu_ids is None


@pytest.mark.parametrize("key", ["\u00b2", "\u0663", "9" * 5000, 10**30, 2**40, -1])
def test_core_and_socket_keys_must_be_ascii_numbers_of_a_real_node(key: object) -> None:
    doc = _doc()
    sockets = doc["jobs"][SLEEPER]["job_resources"]["nodes"]["allocation"][0]["sockets"]
    sockets[0]["cores"][0]["index"] = key
    result = parse_squeue(json.dumps(doc))
    _skipped_only(result, SLEEPER, "sockets.0.cores")


# --- through the CLI ---------------------------------------------------------------------------


def _serve(tmp_path: Path, text: str) -> Path:
    document = tmp_path / "squeue.json"
    document.write_text(text, encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text(
        f"#!{sys.executable}\nimport sys\n"
        "if '--version' in sys.argv: print('slurm 24.11.5'); sys.exit(0)\n"
        f"sys.stdout.write(open({str(document)!r}, encoding='utf-8').read())\n"
    )
    squeue.chmod(squeue.stat().st_mode | stat.S_IXUSR)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"slurm": {"bin_dir": str(bin_dir)}}))
    return config


def test_jobs_json_prints_a_name_that_held_a_lone_surrogate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = json.dumps(_doc()).replace('"name": "sleeper"', '"name": "a\\udc80"', 1)
    config = _serve(tmp_path, text)
    assert main(["-c", str(config), "jobs", "--json", "-t", "all"]) == 0
    names = {j["name"] for j in json.loads(capsys.readouterr().out)["jobs"]}
    assert "a\ufffd" in names


def test_jobs_skips_a_start_time_no_calendar_can_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    when = {"set": True, "infinite": False, "number": 10**15}
    config = _serve(tmp_path, _with(SLEEPER, start_time=when))
    assert main(["-c", str(config), "jobs", "-t", "all"]) == 0
    out, err = capsys.readouterr()
    assert "after the year 9999" in err and "1 records skipped" in out


def test_jobs_says_slurm_output_is_broken_with_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _serve(tmp_path, '{"jobs": [' + "[" * 5000 + "]" * 5000 + "]}")
    assert main(["-c", str(config), "jobs", "--json"]) == 3
    assert "nested too deep" in capsys.readouterr().err


def test_jobs_prints_names_and_reasons_that_look_like_markup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _doc()
    doc["jobs"][SLEEPER]["name"] = "[/x] [bold]y"
    doc["jobs"][GPU2]["nodes"] = "n[/x]"
    config = _serve(tmp_path, json.dumps(doc))
    assert main(["-c", str(config), "jobs", "-t", "all"]) == 0
    out, err = capsys.readouterr()
    assert "[/x] [bold]y" in out and "n[/x]" in err


@pytest.mark.parametrize("text", ["slurm \u00b24.11.1", "slurm 24.1\u00b2", "slurm 2\u0664.11",
                                  "slurm " + "9" * 5000 + ".1"])
def test_a_version_line_with_non_ascii_digits_or_thousands_of_them(text: str) -> None:
    try:
        version = parse_version(text)
    except SlurmFormatError:
        return
    assert all(0 <= part < 1_000_000 for part in version)
