"""The coercers accept every layout Slurm has printed, and name the field when they cannot."""

from __future__ import annotations

import pytest

from slurm_sync.errors import SlurmFormatError
from slurm_sync.slurm.shapes import (
    parse_tres_list,
    parse_tres_string,
    slurm_bool,
    slurm_int,
    slurm_str,
    slurm_time,
    slurm_words,
)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (4, 4),
        ("17", 17),
        (None, None),
        ({"set": True, "infinite": False, "number": 8}, 8),
        ({"set": False, "infinite": False, "number": 0}, None),
        ({"set": True, "infinite": True, "number": 0}, None),
        (4294967294, None),  # NO_VAL as 22.05 prints it
        (4294967295, None),  # INFINITE
        (18446744073709551614, None),  # NO_VAL64
        ("Infinity", None),  # +complex dumps
        (3.0, 3),
    ],
)
def test_slurm_int_layouts(raw: object, want: int | None) -> None:
    assert slurm_int(raw, "f") == want


def test_slurm_int_16_bit_sentinels_only_when_asked() -> None:
    assert slurm_int(65534, "restart_cnt", bits=16) is None
    assert slurm_int(65534, "job_id") == 65534


@pytest.mark.parametrize("raw", [True, "abc", [1], {"set": True, "number": "x"}])
def test_slurm_int_rejects_with_field_name(raw: object) -> None:
    with pytest.raises(SlurmFormatError) as err:
        slurm_int(raw, "jobs[2].cpus")
    assert "jobs[2].cpus" in str(err.value)


def test_slurm_time_zero_is_unset() -> None:
    assert slurm_time(0) is None
    assert slurm_time({"set": True, "infinite": False, "number": 0}) is None
    assert slurm_time({"set": True, "infinite": False, "number": 1700000000}) == 1700000000


def test_words_and_strings() -> None:
    assert slurm_words("PENDING") == ("PENDING",)
    assert slurm_words(["PENDING", "REQUEUED"]) == ("PENDING", "REQUEUED")
    assert slurm_words(None) == ()
    assert slurm_str(["a"]) == "a"
    assert slurm_str(None) == ""
    with pytest.raises(SlurmFormatError):
        slurm_words(3, "job_state")
    assert slurm_bool(["true"]) is True
    assert slurm_bool("false") is False


def test_tres_string_and_list_agree_in_mb() -> None:
    text = parse_tres_string("cpu=2,mem=2G,node=1,billing=2,gres/gpu=2")
    listed = parse_tres_list(
        [
            {"type": "cpu", "name": "", "id": 1, "count": 2},
            {"type": "mem", "name": "", "id": 2, "count": 2048},
            {"type": "node", "name": "", "id": 4, "count": 1},
            {"type": "billing", "name": "", "id": 5, "count": 2},
            {"type": "gres", "name": "gpu", "id": 1001, "count": 2},
        ]
    )
    assert text == listed == {"cpu": 2, "mem": 2048, "node": 1, "billing": 2, "gres/gpu": 2}


def test_tres_bad_entry_names_it() -> None:
    with pytest.raises(SlurmFormatError, match=r"tres_req_str=.*TRES .cpu. is not a count"):
        parse_tres_string("cpu=x", "tres_req_str")
