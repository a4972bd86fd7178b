"""The batch script of a Buildkite job, run by bash as slurmstepd would run it, with a stand-in
agent: what it leaves behind when Slurm's signals come at the wrong moment.

Under ``scancel --signal=TERM --full`` (or a plain scancel) Slurm sends SIGTERM to every process
of the job, not just to the script: here a helper in the script's process group does the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from slurm_sync.connectors.buildkite.script import job_script

JOB = "01890000-0000-4000-8000-000000000007"


def _agent(tmp_path: Path, body: str) -> Path:
    """A stand-in ``buildkite-agent``: notes that it started, then runs ``body``."""
    agent = tmp_path / "agent"
    agent.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""\
        import os, signal, sys, time
        open({str(tmp_path / 'started')!r}, "w").close()
        """) + textwrap.dedent(body))
    agent.chmod(0o755)
    return agent


def _script(tmp_path: Path, agent: Path, batch_file: Path) -> Path:
    script = tmp_path / "job.sh"
    script.write_text(job_script(agent=str(agent), config="/dev/null",
                                 build_root=str(tmp_path / "builds"), per_build=False,
                                 tags="queue=q", batch_file=str(batch_file)))
    return script


def _start(script: Path) -> subprocess.Popen[bytes]:
    env = {"SLURM_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "0", "PATH": os.environ["PATH"]}
    return subprocess.Popen(["bash", str(script)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_term_that_comes_while_the_build_path_is_removed_does_not_leave_it(
        tmp_path: Path) -> None:
    # The agent has finished its job (Buildkite cancelled it) when the syncer's scancel
    # --signal=TERM --full arrives: every process of the job gets SIGTERM, the clean-up's
    # rm too. Here the agent leaves behind a process that sends TERM to the whole job for
    # a second, and a build path big enough that removing it takes a while.
    refs = tmp_path / "batch.refs"
    refs.write_text(f"app/1/{JOB}\n")
    build_path = tmp_path / "builds" / "job-41"
    agent = _agent(tmp_path, f"""\
        for i in range(40):
            d = os.path.join({str(build_path)!r}, "app", str(i))
            os.makedirs(d)
            for j in range(100):
                open(os.path.join(d, str(j)), "w").close()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.fork() == 0:  # Slurm's TERMs, to every process of the job
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                os.killpg(0, signal.SIGTERM)
                time.sleep(0.001)
            os._exit(0)
        sys.exit(0)
        """)
    job = _start(_script(tmp_path, agent, refs))
    _, err = job.communicate(timeout=60)
    assert (tmp_path / "started").exists()
    assert not build_path.exists(), err.decode()
    # the agent's exit status, or 143 when bash reaped the agent while a TERM cut its wait
    # short (bash then has no status to give); never a status the clean-up's rm died of
    assert job.returncode in (0, 128 + signal.SIGTERM), err.decode()


def test_a_term_before_the_agent_starts_means_it_never_starts(tmp_path: Path) -> None:
    # The array task's map is read from a FIFO the test holds: the TERM comes while the
    # script is still finding its Buildkite job, as a cancel sent the moment a job starts.
    refs = tmp_path / "batch.refs"
    os.mkfifo(refs)
    agent = _agent(tmp_path, "sys.exit(0)\n")
    job = _start(_script(tmp_path, agent, refs))
    time.sleep(0.3)
    os.kill(job.pid, signal.SIGTERM)
    writer = threading.Thread(target=refs.write_text, args=(f"app/1/{JOB}\n",))
    writer.start()
    _, err = job.communicate(timeout=30)
    writer.join(timeout=5)
    assert job.returncode == 128 + signal.SIGTERM, err.decode()
    assert not (tmp_path / "started").exists()  # no agent acquired the cancelled job
    assert list((tmp_path / "builds").iterdir()) == []
