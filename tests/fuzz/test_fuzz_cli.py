"""Mutated Slurm output and mutated configs through the command line: a documented exit code and
no traceback, whatever the input.

- ``slurm-sync jobs --json`` with a stand-in ``squeue`` that prints a mutated fixture document:
  0 with valid JSON on standard output, or 3 (Slurm's output cannot be read);
- ``slurm-sync -c <mutated config> check``, the config being config.json.example or, one input
  in three, a cc-slurm-sync config.json (both made hermetic first: stand-in Slurm commands,
  files under a temporary folder, the service at a closed local port): 0 or 1 (what check
  found), 2 (the config is wrong, and nothing was created), or another documented code.

Most inputs run ``main`` in this process; every tenth runs as its own process
(``python -m slurm_sync.cli``), where a traceback would show on standard error.
"""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.cli import main
from tests.fuzz.conftest import SEED, inputs
from tests.fuzz.mutate import mutate

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "slurm"
SQUEUE_DOCUMENTS = sorted(FIXTURES.glob("*/squeue-*.json"))
EXAMPLE = ROOT / "config.json.example"
DOCUMENTED = {0, 1, 2, 3, 4, 5, 75}  # README: exit codes (70, 130, 141 are not expected here)
SECONDS_PER_INPUT = 30.0
NODES = "".join(f"lab{p.name.replace('.', '')}n1|2|2|1\\n" for p in FIXTURES.iterdir()
                if p.is_dir())


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def _standins(folder: Path, version: str, squeue: Path, sacct: Path) -> Path:
    """Stand-in squeue, sacct and sinfo printing the given files; their folder."""
    folder.mkdir(parents=True, exist_ok=True)
    _script(folder / "squeue",
            f'[ "$1" = --version ] && {{ echo "slurm {version}.1"; exit 0; }}\n'
            f'cat "{squeue}"\n')
    _script(folder / "sacct", f'cat "{sacct}"\n')
    _script(folder / "sinfo", f"printf '{NODES}'\n")
    return folder


def _run(argv: list[str], capsys: pytest.CaptureFixture[str], own_process: bool
         ) -> tuple[int, str, str]:
    if own_process:
        done = subprocess.run([sys.executable, "-m", "slurm_sync.cli", *argv], capture_output=True,
                              timeout=SECONDS_PER_INPUT * 2, cwd=ROOT, check=False)
        return (done.returncode, done.stdout.decode("utf-8", "replace"),
                done.stderr.decode("utf-8", "replace"))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_clean(context: str, code: int, out: str, err: str, seconds: float) -> None:
    assert code in DOCUMENTED, f"{context}: exit {code}: {err[-2000:]}"
    assert "Traceback" not in out + err, f"{context}: {err[-2000:]}"
    assert seconds < SECONDS_PER_INPUT, f"{context}: {seconds:.1f} s"


def test_jobs_json_on_mutated_slurm_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tried: Counter[str]
) -> None:
    document = tmp_path / "squeue.json"
    state = tmp_path / "state"
    for index in range(inputs(60)):
        rng = random.Random(f"{SEED}:jobs:{index}")
        source = rng.choice(SQUEUE_DOCUMENTS)
        text, what = mutate(source.read_text(encoding="utf-8"), rng, markup=False)
        document.write_bytes(text.encode("utf-8", "surrogatepass"))
        version = source.parent.name
        bin_dir = _standins(tmp_path / f"bin-{version}", version, document,
                            FIXTURES / version / "sacct.json")
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"state_dir": str(state),
                                      "slurm": {"bin_dir": str(bin_dir)}}))
        context = (f"seed {SEED}, jobs input {index}, {version}/{source.name}: {what}")
        started = time.perf_counter()
        code, out, err = _run(["-c", str(config), "jobs", "--json", "-t", "all"], capsys,
                              own_process=index % 10 == 9)
        tried["jobs"] += 1
        _assert_clean(context, code, out, err, time.perf_counter() - started)
        assert code in (0, 3), f"{context}: exit {code}: {err[-2000:]}"
        if code == 0:
            listed = json.loads(out)
            assert isinstance(listed["jobs"], list) and isinstance(listed["skipped"], list)
        assert not state.exists(), f"{context}: jobs wrote {state}"


def _hermetic_example(folder: Path) -> dict[str, Any]:
    """config.json.example with every path under ``folder`` and every service out of reach."""
    data: dict[str, Any] = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    (folder / "metrics").mkdir(parents=True, exist_ok=True)
    (folder / "spool").mkdir(exist_ok=True)
    token = folder / "cc-token"
    token.write_text("t0ken\n")
    token.chmod(0o600)
    bin_dir = _standins(folder / "bin", "24.11", FIXTURES / "24.11" / "squeue-running.json",
                        FIXTURES / "24.11" / "sacct.json")
    data["state_dir"] = str(folder / "state")
    data["metrics_file"] = str(folder / "metrics" / "slurm-sync.prom")
    data["slurm"].update({"bin_dir": str(bin_dir), "commands": {"sacct": str(bin_dir / "sacct")},
                          "timeout": 20, "state_save_location": str(folder / "spool")})
    data["connectors"]["events"]["output"] = str(folder / "events.jsonl")
    data["connectors"]["clustercockpit"].update(
        {"url": "http://127.0.0.1:9", "token": {"file": str(token)}, "retries": 0})
    return data


def _hermetic_legacy(folder: Path) -> dict[str, Any]:
    """A cc-slurm-sync config.json (read as it is) with the same hermetic paths."""
    example = _hermetic_example(folder)
    bin_dir = Path(example["slurm"]["bin_dir"])
    return {
        "clustername": "hpc1",
        "slurm": {"squeue": str(bin_dir / "squeue"), "sacct": str(bin_dir / "sacct"),
                  "state_save_location": example["slurm"]["state_save_location"]},
        "cc-backend": {"host": "http://127.0.0.1:9", "apikey": "eyJ0eXAi.k", "retries": 0},
        "accelerators": {"gpu1": {"0": "00000000:03:00.0"}},
        "node_regex": "^gpu[0-9]+$",
        "state_dir": example["state_dir"],
    }


def test_check_on_mutated_configs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tried: Counter[str]
) -> None:
    bases = [json.dumps(_hermetic_example(tmp_path), indent=2),
             json.dumps(_hermetic_legacy(tmp_path), indent=2)]
    for base in bases:
        assert main(["-c", str(_write(tmp_path, base)), "check"]) in (0, 1)
    capsys.readouterr()
    state = tmp_path / "state"
    for index in range(inputs(60)):
        rng = random.Random(f"{SEED}:check:{index}")
        text, what = mutate(bases[index % 3 == 2], rng, markup=False)
        config = _write(tmp_path, text)
        context = f"seed {SEED}, check input {index}: {what}"
        started = time.perf_counter()
        code, out, err = _run(["-c", str(config), "check"], capsys,
                              own_process=index % 10 == 9)
        tried["check"] += 1
        _assert_clean(context, code, out, err, time.perf_counter() - started)
        if code == 2:
            assert not state.exists() and not (tmp_path / "events.jsonl").exists(), context
            assert err.strip(), context


def _write(folder: Path, text: str) -> Path:
    path = folder / "config.json"
    if path.exists():
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    os.chmod(path, 0o600)
    return path
