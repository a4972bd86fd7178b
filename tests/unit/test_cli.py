"""``slurm-sync jobs``: the table, --json, and the documented exit codes.

Slurm here is a stand-in script serving a fixture document; tests/lab runs the same command
against real Slurm.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_sync.cli import main

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "slurm" / "24.05"


def _fake_slurm(tmp_path: Path, squeue_body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text(f"#!{sys.executable}\nimport sys\n{squeue_body}\n")
    squeue.chmod(squeue.stat().st_mode | stat.S_IXUSR)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"slurm": {"bin_dir": str(bin_dir)}}))
    return config


def _serving(document: Path) -> str:
    return (
        "if '--version' in sys.argv: print('slurm 24.05.8'); sys.exit(0)\n"
        "open(sys.argv[0] + '.argv', 'w').write(' '.join(sys.argv[1:]))\n"
        f"sys.stdout.write(open({str(document)!r}, encoding='utf-8').read())"
    )


def test_jobs_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _fake_slurm(tmp_path, _serving(FIXTURE / "squeue-running.json"))
    assert main(["-c", str(config), "jobs"]) == 0
    out, err = capsys.readouterr()
    assert "cores03" in out and "Ωmega-déjà-✓" in out and "105_[2-3%2]" in out
    assert "lab2405n1:0,1" in out  # gpu2's GPU indices
    assert "skipped squeue record 2 (job abc)" in err


def test_jobs_json_filters_and_passes_filters_to_slurm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _fake_slurm(tmp_path, _serving(FIXTURE / "squeue-running.json"))
    assert main(["-c", str(config), "jobs", "--json", "-t", "R", "-u", "bob"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {j["name"] for j in document["jobs"]} == {"gpu2", "array"}
    assert all(j["state"] == "RUNNING" for j in document["jobs"])
    assert document["producer"]["plugin"] == "v0.0.41"
    assert (tmp_path / "bin" / "squeue.argv").read_text() == (
        "--json --states=RUNNING,CONFIGURING,RESIZING --user=bob")


def test_slurm_failure_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _fake_slurm(
        tmp_path,
        "sys.stderr.write('squeue: error: Unable to contact slurm controller\\n'); sys.exit(1)",
    )
    assert main(["-c", str(config), "jobs"]) == 3
    assert "Unable to contact slurm controller" in capsys.readouterr().err


def test_config_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"slurm": {"timeout": "soon"}}')
    assert main(["-c", str(config), "jobs"]) == 2
    assert "$.slurm.timeout" in capsys.readouterr().err


def test_bad_state_exits_2_before_slurm_is_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _fake_slurm(tmp_path, _serving(FIXTURE / "squeue-running.json"))
    assert main(["-c", str(config), "jobs", "-t", "RUNNNING"]) == 2
    assert not (tmp_path / "bin" / "squeue.argv").exists()


def _fake_smi(tmp_path: Path, body: str, code: int = 0) -> None:
    smi = tmp_path / "nvidia-smi"
    # PATH holds only tmp_path in these tests: the script uses shell builtins only
    smi.write_text(f"#!/bin/sh\nprintf '%s' '{body}'\nexit {code}\n")
    smi.chmod(0o755)


def test_discover_accelerators_prints_the_block_for_this_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_smi(tmp_path, "0, 00000000:03:00.0\n1, 00000000:44:00.0\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("socket.gethostname", lambda: "gpu07.cluster.example")
    assert main(["clustercockpit", "discover-accelerators"]) == 0
    block = json.loads(capsys.readouterr().out)
    assert block == {"accelerators": {"gpu07": {"0": "00000000:03:00.0",
                                                "1": "00000000:44:00.0"}}}


def test_discover_accelerators_says_when_there_is_no_nvidia_smi(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["clustercockpit", "discover-accelerators"]) == 1
    assert "nvidia-smi is not on PATH" in capsys.readouterr().err
    _fake_smi(tmp_path, "NVIDIA-SMI has failed\n", code=9)
    assert main(["clustercockpit", "discover-accelerators"]) == 1
    assert "exit 9" in capsys.readouterr().err


def test_status_counts_deliveries_and_lists_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from slurm_sync.actions import Action, Outcome
    from slurm_sync.store import Store

    state = tmp_path / "state"
    state.mkdir()
    with Store.open(str(state / "state.db")) as store:
        store.record_outcomes(outcomes=[
            Outcome.done(Action("clustercockpit", "start", "c/1/10")),
            Outcome.permanent(Action("clustercockpit", "start", "c/2/20"),
                              "HTTP 400: resources must not be empty"),
        ], now=1_795_400_000.0)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"state_dir": str(state)}))
    assert main(["-c", str(config), "status"]) == 0
    out = capsys.readouterr().out
    assert "c/2/20" in out and "resources must not be empty" in out
    assert main(["-c", str(config), "status", "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    (row,) = state["connectors"]
    assert (row["connector"], row["delivered"], row["refused"]) == ("clustercockpit", 1, 1)
    assert state["refusals"][0]["key"] == "c/2/20"


def test_status_check_and_metrics_show_a_connector_that_falls_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two tracked runs ended two hours ago and are not stopped: status names the connector and
    why, check fails, and the metrics carry the figures an alert reads."""
    import time

    from slurm_sync.actions import Action, Outcome
    from slurm_sync.metrics import render_metrics
    from slurm_sync.store import Store

    now = time.time()
    state = tmp_path / "state"
    state.mkdir()
    with Store.open(str(state / "state.db")) as store:
        store.record_outcomes(outcomes=[Outcome.done(Action("clustercockpit", "start", "c/1/10"))],
                              now=now - 7300, watermarks={"clustercockpit": now - 30})
        store.record_lag(connector="clustercockpit", now=now - 30, ended_unstopped=2,
                         oldest_end=now - 7200, unknown=1, refused=0)
        lag = store.lag(connector="clustercockpit")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"state_dir": str(state), "max_lag_seconds": 3600,
                                  "slurm": {"bin_dir": str(tmp_path)}}))
    assert main(["-c", str(config), "status", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["connectors"]
    assert row["ended_unstopped"] == 2 and row["unknown_to_slurm"] == 1
    assert "a run that ended 72" in row["behind"] and "not stopped" in row["behind"]
    assert main(["-c", str(config), "check"]) == 1
    checked = " ".join(capsys.readouterr().out.split())
    assert "lag of clustercockpit" in checked and "is not stopped" in checked.replace("│ ", "")
    assert lag is not None
    text = render_metrics(finished=now, duration=1.0, exit_code=5, outcomes=[],
                          outbox_depth={"clustercockpit": 0}, calls=[], lag=[lag],
                          behind={"clustercockpit"})
    assert 'slurm_sync_ended_unstopped{connector="clustercockpit"} 2' in text
    assert 'slurm_sync_behind{connector="clustercockpit"} 1' in text
    assert f'slurm_sync_oldest_unstopped_end_timestamp_seconds{{connector="clustercockpit"}} ' \
           f'{now - 7200:.0f}' in text


def test_status_and_metrics_show_hook_events_no_syncer_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Events the hook recorded minutes ago still wait: no resident syncer is running. status
    says so (and how many, since when), and the metrics carry it for an alert."""
    import os
    import time

    from slurm_sync.metrics import render_metrics
    from slurm_sync.spool import Spool

    now = time.time()
    spool = tmp_path / "spool"
    spool.mkdir()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"state_dir": str(tmp_path), "hook_spool": str(spool)}))
    (spool / "start.12").write_text("")
    assert main(["-c", str(config), "status", "--json"]) == 0
    hook = json.loads(capsys.readouterr().out)["hook"]
    assert (hook["waiting"], hook["readable"], hook["behind"]) == (1, True, "")
    (spool / "end.11").write_text("")
    os.utime(spool / "end.11", (now - 600, now - 600))
    assert main(["-c", str(config), "status", "--json"]) == 0
    hook = json.loads(capsys.readouterr().out)["hook"]
    assert hook["waiting"] == 2 and abs(hook["oldest"] - (now - 600)) < 1
    assert "the oldest for 60" in hook["behind"] and "run --loop" in hook["behind"]
    assert main(["-c", str(config), "status"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"hook events waiting in {spool}: 2" in text
    assert "behind: hook: 2 event(s) waiting" in text
    metrics = render_metrics(finished=now, duration=1.0, exit_code=0, outcomes=[],
                             outbox_depth={}, calls=[], hook=Spool(str(spool)).backlog())
    assert "slurm_sync_hook_events_waiting 2" in metrics
    assert f"slurm_sync_hook_oldest_event_timestamp_seconds {now - 600:.0f}" in metrics
    config.write_text(json.dumps({"state_dir": str(tmp_path),
                                  "hook_spool": str(tmp_path / "missing")}))
    assert main(["-c", str(config), "status", "--json"]) == 0
    hook = json.loads(capsys.readouterr().out)["hook"]
    assert hook["readable"] is False and "cannot read" in hook["behind"]


def test_buildkite_secret_commands_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """encrypt asks for the value (never argv) and decrypt-env prints the export."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = tmp_path / "agents.key"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public = tmp_path / "agents.pub"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    import slurm_sync.connectors.buildkite.secrets as secrets

    monkeypatch.setattr(secrets.cli_encrypt, "__kwdefaults__",
                        {**secrets.cli_encrypt.__kwdefaults__, "getpass": lambda p: "s3cr3t v"})
    assert main(["buildkite", "encrypt", str(public), "--name", "CODECOV_TOKEN"]) == 0
    snippet = capsys.readouterr().out.strip()
    assert snippet.startswith("SECRET_CODECOV_TOKEN: \"") and "s3cr3t" not in snippet
    monkeypatch.setenv("SECRET_CODECOV_TOKEN", snippet.split(": ", 1)[1].strip('"'))
    monkeypatch.setenv("BUILDKITE_PULL_REQUEST", "false")
    monkeypatch.setenv("BUILDKITE_REPO", "https://github.com/org/repo")
    assert main(["buildkite", "decrypt-env", str(private)]) == 0
    assert capsys.readouterr().out.strip() == "export CODECOV_TOKEN='s3cr3t v'"


def test_bank_reconcile_resends_a_period_from_sacct(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every run that ended in the period is PUT with its actual amount; others are not."""
    from decimal import Decimal

    from tests.emulators.bank import Bank

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "slurm" / "24.11"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text(f"#!/bin/sh\ncat {fixture / 'sacct.json'}\n")
    (bin_dir / "squeue").write_text("#!/bin/sh\necho 'slurm 24.11.5'\n")
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    token = tmp_path / "token"
    token.write_text("t\n")
    token.chmod(0o600)
    with Bank(token="t") as bank:
        bank.add_user("alice", 5001)
        bank.add_user("bob", 5002)
        bank.set_allocation("lab", "1000")
        bank.set_user_allocation("lab", "alice", "1000")
        bank.set_user_allocation("lab", "bob", "1000")
        config = tmp_path / "config.json"
        config.write_text(json.dumps({
            "slurm": {"bin_dir": str(bin_dir)},
            "connectors": {"bank": {"url": bank.url, "token": {"file": str(token)},
                                    "prices": {"main": "3600"}, "unpriced": "free"}}}))
        # the capture's jobs 14-17 ended at 1795321839 (2026-11-22 04:30:39 UTC)
        args = ["-c", str(config), "bank", "reconcile", "--since", "2026-11-22T04:30:39Z",
                "--until", "2026-11-22T04:30:40Z"]
        assert main([*args, "--dry-run"]) == 0
        assert bank.job_ids() == [] and "would re-send 4 ended jobs" in capsys.readouterr().out
        if not {"alice", "bob"} <= {p.pw_name for p in __import__("pwd").getpwall()}:
            pytest.skip("sacct's JSON has no uid; this machine has no alice and bob (the lab's)")
        assert main(args) == 0
        assert bank.job_ids() == ["14", "15", "16", "17"]
        # 1 cpu for 1 s at 3600 SU/h
        assert [bank.job(j)["amount"] for j in bank.job_ids()] == ["1.00"] * 4
        assert bank.usage("lab") == Decimal("4.00")


@pytest.mark.parametrize("loop", ["nan", "inf", "-5", "0"])
def test_loop_needs_a_finite_interval_above_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], loop: str
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"state_dir": str(tmp_path / "state")}))
    assert main(["-c", str(config), "--loop", loop]) == 2
    assert "--loop" in capsys.readouterr().err


def test_a_json_token_a_header_cannot_carry_is_named_not_shown(tmp_path: Path) -> None:
    from slurm_sync.connectors.clustercockpit import ClusterCockpitConnector
    from slurm_sync.errors import ConfigError

    token = tmp_path / "cc-slurm-sync.json"
    token.write_text(json.dumps({"cc-backend": {"apikey": "s\u00e9cr\u20acT"}}))
    token.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        ClusterCockpitConnector({"url": "http://127.0.0.1:9", "token": {"file": str(token)},
                                 "token_json_key": "cc-backend.apikey", "api_version": "1.5"})
    assert "outside Latin-1" in str(caught.value) and "\u20ac" not in str(caught.value)


def test_a_run_loads_only_the_connectors_its_config_enables(tmp_path: Path) -> None:
    """Issue 14: every cron run imported every installed connector (bank's and Buildkite's
    modules, with what they import: 0.2 s of each run's start-up). A core command loads the
    connectors its config names; help and a connector's own command still see all of them."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"state_dir": str(tmp_path / "state"),
                                  "connectors": {"events": {"output": "-"}}}))
    probe = ("import sys\nfrom slurm_sync.cli import main\n"
             "code = main(sys.argv[1:])\n"
             "print(code, sorted({m.split('.')[2] for m in sys.modules\n"
             "                    if m.startswith('slurm_sync.connectors.')}))\n")
    loaded = subprocess.run([sys.executable, "-c", probe, "-c", str(config), "status"],
                            capture_output=True, text=True, check=False)
    assert loaded.stdout.splitlines()[-1] == "0 ['events']", loaded.stdout + loaded.stderr
    helped = subprocess.run([sys.executable, "-c", probe, "--help"], capture_output=True,
                            text=True, check=False)
    assert "bank" in helped.stdout and "buildkite" in helped.stdout, helped.stdout
