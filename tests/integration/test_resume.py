"""The coordinator dies after round 1; `fedvault server resume` finishes the run.

Real processes on 127.0.0.1 with TLS and site authentication: a coordinator and two
sites. Once round 1 is checkpointed the coordinator (CLI and SuperLink) is killed
with SIGKILL, as in a crash; the sites keep retrying. `server resume` restarts the
SuperLink on the same state database and continues from round 2 with the same run
key, so each site's ledger continues the same run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from consortium import events, flower_pids, stop_all, write_site
from typer.testing import CliRunner

from fedvault.client.client_cli import client_app
from fedvault.common.data import default_dataset
from fedvault.common.processes import free_port
from fedvault.server.certs_cli import certs_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROUNDS = 3
LAUNCH = (
    "import sys; from importlib import import_module; "
    "m, n = sys.argv[1].split(':'); getattr(import_module(m), n)(sys.argv[2:])"
)


def _prepare(root: Path) -> None:
    runner = CliRunner()
    for args in (
        ["init", root / "certs"],
        ["server", root / "certs", "--host", "localhost"],
    ):
        assert runner.invoke(certs_app, [str(a) for a in args]).exit_code == 0
    frame = default_dataset().sample(frac=1.0, random_state=1)
    (root / "data").mkdir()
    fleet = free_port()
    for i in range(2):
        frame.iloc[i::2].to_parquet(root / "data" / f"site-{i}.parquet", index=False)
        name = f"site-{i}"
        keygen = ["keygen", str(root / "keys" / name), "--name", name]
        assert runner.invoke(client_app, keygen).exit_code == 0
        write_site(root, name, fleet, "bc", data=f"data/{name}.parquet")
    coordinator = {
        "coordinator": {
            "run-dir": "run",
            "certs": "certs",
            "expected-sites": 2,
            "fleet-address": f"127.0.0.1:{fleet}",
            "control-address": f"127.0.0.1:{free_port()}",
            "client-threads": 1,
            "timeout": 400.0,
        },
        "training": {
            "rounds": ROUNDS,
            "batch-size": 16,
            "min-sites": 2,
            "round-timeout": 150.0,
            "epsilon": 3.0,
        },
        "sites": {f"site-{i}": f"keys/site-{i}/site.pub" for i in range(2)},
    }
    (root / "coordinator.toml").write_text(tomli_w.dumps(coordinator))


class Processes:
    def __init__(self, root: Path) -> None:
        self.root, self.procs = root, {}

    def launch(self, name: str, app: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.root / f"{name}.out").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCH, app, *args],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def crash_coordinator(self) -> None:
        """SIGKILL the coordinator's CLI and its SuperLink (not the sites)."""
        os.killpg(self.procs["coordinator"].pid, signal.SIGKILL)
        self.procs["coordinator"].wait(timeout=10)
        run_home = self.root / "run"
        for pid in flower_pids(run_home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop_all(self) -> list[int]:
        return stop_all(self.procs.values(), self.root)


def _wait(what: str, check, timeout: float, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


def test_resume_after_the_coordinator_dies(tmp_path):
    _prepare(tmp_path)
    procs = Processes(tmp_path)
    config = ["--config", str(tmp_path / "coordinator.toml")]
    server = "fedvault.server.server_cli:server_app"
    try:
        coordinator = procs.launch("coordinator", server, "start", *config)
        live = tmp_path / "run" / "coordinator.json"  # sites registered, run submitted
        _wait(
            "the coordinator",
            lambda: live.exists() and "run-id" in live.read_text(),
            90,
            coordinator,
        )
        for i in range(2):
            procs.launch(
                f"site-{i}",
                "fedvault.client.client_cli:client_app",
                "start",
                "--config",
                str(tmp_path / f"site-{i}.toml"),
            )
        rounds = lambda: [e for e in events(tmp_path) if e["event"] == "round"]  # noqa: E731
        _wait("round 1", lambda: len(rounds()) >= 1, 240, coordinator)
        procs.crash_coordinator()
        assert not (tmp_path / "run" / "output" / "summary.json").exists()
        done_before = len(rounds())

        resumed = procs.launch("resume", server, "resume", *config)
        assert resumed.wait(timeout=420) == 0, (tmp_path / "resume.out").read_text()
    finally:
        survivors = procs.stop_all()
    assert not survivors

    summary = json.loads((tmp_path / "run" / "output" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["rounds_completed"] == ROUNDS
    assert [row["round"] for row in summary["history"]] == list(range(1, ROUNDS + 1))
    assert any(e["event"] == "resumed" for e in events(tmp_path))
    assert done_before < ROUNDS
    run_keys = set()
    for i in range(2):
        ledger = tmp_path / "state" / f"site-{i}" / "ledger" / "bc.jsonl"
        records = [json.loads(line) for line in ledger.read_text().splitlines()]
        run_keys |= {r["run_id"] for r in records}
        trained = sorted({r["round"] for r in records})
        assert trained == list(range(1, ROUNDS + 1))  # every round it trained, once
        assert summary["sites"][f"site-{i}"]["epsilon_lifetime"] == pytest.approx(
            records[-1]["epsilon"]
        )
    assert len(run_keys) == 1  # one run in the sites' ledgers, across the restart
