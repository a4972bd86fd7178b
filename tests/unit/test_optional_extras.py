"""``cryptography`` is an extra (slurm-sync[buildkite-secrets]): without it everything runs,
and the secret commands say what to install instead of failing with a traceback."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
sys.modules["cryptography"] = None  # as if not installed
from slurm_sync.cli import main
code = main(["buildkite", "encrypt", "/nonexistent.pem"])
assert "cryptography" not in sys.modules or sys.modules["cryptography"] is None
import slurm_sync.connectors.buildkite, slurm_sync.engine  # the rest imports without it
sys.exit(code)
"""


def test_the_secret_commands_name_the_extra_when_cryptography_is_missing() -> None:
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'slurm-sync[buildkite-secrets]'" in done.stderr
    assert "Traceback" not in done.stderr
