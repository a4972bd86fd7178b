"""The simulated cluster's scheduler and the ``buildkite-agent`` each submitted job runs, for the
Buildkite chaos run: it starts the tasks sbatch added (submits.py) and does what the job's batch
script would do, against the Buildkite emulator in this process.

    agents = Agents(emu, work)
    agents.tick(time.time())        # every ~0.1 s from the harness's loop
    agents.log                      # every acquire, start, finish, refusal: what happened when

Each tick, under the stand-ins' lock:
- a pending task whose wait is over starts, unless its Buildkite job no longer wants an agent
  (finished, cancelled, canceling) and the task is one that a busy cluster holds back (seeded):
  then it stays pending until scancel'd;
- a task that starts runs its batch script as written: the Buildkite job is the ``REF=`` of the
  script, or line ``task + 1`` of the array's batch map (read when the task starts, as the
  script does). Its agent registers and acquires that job (in process, through the emulator's
  own routes, without the faults meant for the connector): 200 starts it; anything else is a
  refusal and the task ends FAILED with the agent's exit 27 (a 422 for a job held by another of
  our tasks is a duplicate, see check.py);
- a running task's agent finishes its job (exit 0, passed) once the task's seeded runtime is
  over; polls the job's state every second and stops on ``canceling``; stops on the SIGTERM of
  ``scancel --signal`` or on a full scancel (finishing the job with ``signal_reason:
  agent_stop``, so a canceling job becomes canceled); the task then ends (FAILED 143 when
  stopped, COMPLETED 0 when it passed; a full scancel has ended it already).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from tests.chaos import submits
from tests.emulators.base import Reply, Request
from tests.emulators.buildkite import FINISHED, Buildkite

__all__ = ["Agents", "ref_of"]

POLL = 1.0  # the agent's job_status_interval
_REF = re.compile(r"^REF=(?:'([^']*)'|(\S+))$", re.M)
_MAP = re.compile(r"""^REF=\$\(sed -n "\$\(\(SLURM_ARRAY_TASK_ID \+ 1\)\)p" """
                  r"""(?:'([^']*)'|(\S+))\)$""", re.M)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def ref_of(entry: dict[str, Any], task: dict[str, Any]) -> str | None:
    """The Buildkite job (``pipeline/build/uuid``) the task's batch script runs, as the script
    finds it; None when it finds none (the script exits 2)."""
    script = entry["script"]
    match = _REF.search(script)
    if match is not None:
        ref = match[1] or match[2]
    else:
        found = _MAP.search(script)
        if found is None or task["task"] is None:
            return None
        try:
            lines = Path(found[1] or found[2]).read_text(encoding="utf-8").splitlines()
        except OSError:
            return None
        if not 0 <= task["task"] < len(lines):
            return None
        ref = lines[task["task"]].strip()
    job = ref.rsplit("/", 1)[-1]
    return ref if _UUID.match(job) else None


def slurm_id(entry: dict[str, Any], task: dict[str, Any]) -> str:
    """How scancel names the task: ``12`` or ``12_3``."""
    return (f"{entry['job_id']}_{task['task']}" if entry["array_size"]
            else str(entry["job_id"]))


class Agents:
    """The scheduler and the agents (see the module docstring)."""

    def __init__(self, emu: Buildkite, work: Path) -> None:
        self.emu = emu
        self.work = work
        self.log: list[dict[str, Any]] = []
        self.running: dict[str, dict[str, Any]] = {}  # slurm id -> agent state

    # --- the emulator's agent API, in process --------------------------------------------

    def _call(self, method: str, path: str, token: str, body: Any = None,
              params: dict[str, str] | None = None) -> Reply:
        headers = {"authorization": f"Token {token}", "x-buildkite-lock-acquire-job": "1"}
        data = b"" if body is None else json.dumps(body).encode()
        request = Request(method, path, {}, headers, data, params or {})
        return self.emu._dispatch(request)

    def _note(self, now: float, sid: str, job: str | None, what: str, reply: Reply | None,
              detail: str = "") -> None:
        body = reply.body if reply is not None and isinstance(reply.body, dict) else {}
        self.log.append({"t": now, "slurm_id": sid, "job": job, "what": what,
                         "status": reply.status if reply is not None else None,
                         "state": self.emu.jobs[job].state if job in self.emu.jobs else None,
                         "detail": detail or str(body.get("message", ""))})

    def _state(self, job: str | None) -> str | None:
        with self.emu.lock:
            found = self.emu.jobs.get(job or "")
            return found.state if found is not None else None

    # --- one tick ------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        with submits.locked(self.work) as state:
            for entry in state["jobs"]:
                for task in entry["tasks"]:
                    if task["end"] is not None and slurm_id(entry, task) not in self.running:
                        continue
                    if task["start"] is None:
                        self._maybe_start(state, entry, task, now)
                    else:
                        self._run(entry, task, now)

    def _maybe_start(self, state: dict[str, Any], entry: dict[str, Any], task: dict[str, Any],
                     now: float) -> None:
        if now < entry["t"] + task["wait"]:
            return
        ref = ref_of(entry, task)
        job = ref.rsplit("/", 1)[-1] if ref else None
        moot = self._state(job)
        if task["hold"] and (moot in FINISHED or moot == "canceling"):
            if not task.get("held"):
                task["held"] = now
                self._note(now, slurm_id(entry, task), job, "held", None,
                           f"its Buildkite job is {moot}: left pending")
            return
        submits._own_id(state, entry, task)
        task["start"] = now
        sid = slurm_id(entry, task)
        if job is None:
            self._end(task, now, "FAILED", 2)
            self._note(now, sid, None, "no-ref", None, "the batch script found no job")
            return
        with self.emu.lock:
            reply = self._call("POST", "/v3/register", self.emu.agent_token,
                               {"name": f"slurm-{task['job_id']}",
                                "meta_data": ["queue=slurm", f"slurm_job_id={task['job_id']}"]})
            token = reply.body["access_token"]
            self._call("POST", "/v3/connect", token)
            got = self._call("PUT", f"/v3/jobs/{job}/acquire", token, params={"job": job})
            self._note(now, sid, job, "acquire", got)
            if got.status != 200:
                self._end(task, now, "FAILED", 27)
                return
            job_token = got.body["token"]
            started = self._call("PUT", f"/v3/jobs/{job}/start", job_token,
                                 {"started_at": ""}, {"job": job})
            self._note(now, sid, job, "start", started)
        self.running[sid] = {"job": job, "token": job_token, "finish_at": now + task["runtime"],
                             "polled": now}

    def _run(self, entry: dict[str, Any], task: dict[str, Any], now: float) -> None:
        sid = slurm_id(entry, task)
        agent = self.running.get(sid)
        if agent is None:
            return
        job = agent["job"]
        why = ""
        if task["cancelled"] is not None:
            why = "scancel"
        elif task["signalled"] is not None:
            why = "SIGTERM"
        elif now - agent["polled"] >= POLL:
            agent["polled"] = now
            if self._state(job) in ("canceling", "canceled"):
                why = "Buildkite cancelled it"
        if not why and now < agent["finish_at"]:
            return
        body: dict[str, Any] = {"exit_status": "0", "finished_at": ""}
        if why:
            body = {"exit_status": "-1", "signal": "SIGTERM", "signal_reason": "agent_stop",
                    "finished_at": ""}
        with self.emu.lock:
            reply = self._call("PUT", f"/v3/jobs/{job}/finish", agent["token"], body,
                               {"job": job})
            self._note(now, sid, job, "finish", reply, why or "its step ended")
        del self.running[sid]
        if task["end"] is None:
            passed = not why and reply.status == 200 and self._state(job) == "passed"
            self._end(task, now, "COMPLETED" if passed else "FAILED", 0 if passed else 143)

    @staticmethod
    def _end(task: dict[str, Any], now: float, state: str, code: int) -> None:
        task["end"] = now
        task["state"] = state
        task["exit_code"] = code


def drive(agents: Agents, seconds: float, step: float = 0.1) -> None:
    """Tick ``agents`` for ``seconds`` (for tests)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        agents.tick(time.time())
        time.sleep(step)
