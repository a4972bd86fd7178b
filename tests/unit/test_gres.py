"""GPU indices from gres_detail in every form Slurm prints, and host list expansion."""

from __future__ import annotations

import pytest

from slurm_sync.errors import SlurmFormatError
from slurm_sync.slurm.gres import expand_hosts, gpu_indices


@pytest.mark.parametrize(
    ("detail", "want"),
    [
        ("gpu:a100:2(IDX:0-1)", (0, 1)),
        ("gpu:2(IDX:0,2)", (0, 2)),  # untyped
        ("gpu(IDX:3)", (3,)),
        ("gpu:a100:12(IDX:0-3,10-11,14)", (0, 1, 2, 3, 10, 11, 14)),  # multi-digit counts
        ("gpu:h100:1(IDX:10)", (10,)),  # a multi-digit single index is not 1 and 0
        ("gpu:a100:1(IDX:0),nic:1(IDX:0)", (0,)),  # other GRES ignored
        ("nic:1(IDX:0),gpu:tesla:2(IDX:2-3)", (2, 3)),
        ("gpu:a100:0(IDX:N/A)", ()),
        ("mps:100(0/100)", ()),
        ("", ()),
    ],
)
def test_gpu_indices(detail: str, want: tuple[int, ...]) -> None:
    assert gpu_indices(detail) == want


def test_bad_index_names_the_field() -> None:
    with pytest.raises(SlurmFormatError, match=r"gres_detail\[0\]"):
        gpu_indices("gpu:2(IDX:a-b)", "gres_detail[0]")


def test_expand_hosts() -> None:
    assert expand_hosts("n[01-03],gpu[7,9]") == ("n01", "n02", "n03", "gpu7", "gpu9")
    assert expand_hosts("None assigned") == ()
    assert expand_hosts("") == ()
    with pytest.raises(SlurmFormatError, match="nodes"):
        expand_hosts("n[3-1")
