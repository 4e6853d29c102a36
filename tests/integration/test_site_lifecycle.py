"""A site's `client start` over its life: one per state folder, nothing of it left
running when it is killed, what a killed one left behind is named, and a site that
crashed rejoins the run with the same key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
from consortium import (
    Consortium,
    events,
    flower_pids,
    prepare_two_sites,
    run_fedvault,
    wait_for_run,
    wait_until,
)

from fedvault.common import processes
from fedvault.common.files import PidLock
from fedvault.common.processes import free_port

CLIENT = "fedvault.client.client_cli:client_app"
SERVER = "fedvault.server.server_cli:server_app"


def _site_toml(tmp_path: Path) -> Path:
    (tmp_path / "data.csv").write_text("x,target\n1,0\n2,1\n")
    doc = {
        "site": {
            "name": "site-a",
            "coordinator": f"127.0.0.1:{free_port()}",
            "data": "data.csv",
            "insecure": True,
            "state-dir": "state",
            "runtime-address": f"127.0.0.1:{free_port()}",
        },
        "privacy": {"dataset-id": "d", "epsilon-max": 5.0, "delta": 1e-5},
    }
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def _client(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    return run_fedvault(monkeypatch, capsys, "client", *args)


def test_a_second_client_start_is_refused_naming_the_first(
    monkeypatch, capsys, tmp_path
):
    config = _site_toml(tmp_path)
    with PidLock(tmp_path / "state" / "site.lock", what="test"):
        code, err = _client(monkeypatch, capsys, "start", "--config", str(config))
    assert code == 2
    assert (
        f"site site-a already runs from {tmp_path / 'state'} (pid {os.getpid()})" in err
    )
    assert "client stop" in err
    assert not (tmp_path / "state" / "supernode.log").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stale_supernode_is_named_and_stopped(monkeypatch, capsys, tmp_path):
    config = _site_toml(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "state" / "flwr-home"),
        processes.PARENT_ENV: str(gone.pid),
    }
    stale = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
    try:
        time.sleep(0.3)
        code, err = _client(monkeypatch, capsys, "start", "--config", str(config))
        assert code == 2
        assert f"sleep 60 (pid {stale.pid}), left running by a" in err
        assert f"kill {stale.pid}" in err
        code, out = _client(monkeypatch, capsys, "stop", "--config", str(config))
        assert code == 0 and f"stopped sleep 60 (pid {stale.pid})" in out
        assert stale.wait(timeout=10) is not None
    finally:
        stale.kill()
        stale.wait(timeout=10)


def _ledger_rounds(root: Path, site: str) -> list[int]:
    path = root / "state" / site / "ledger" / "bc.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted({json.loads(line)["round"] for line in lines})


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_a_killed_site_leaves_nothing_running_and_rejoins(tmp_path):
    # Flower counts the killed site online for up to 60 s, holding the round it
    # missed that long; rounds after it are short: enough for it to rejoin.
    rounds = 8
    prepare_two_sites(tmp_path, rounds=rounds, min_sites=1)
    procs = Consortium(tmp_path)
    config = str(tmp_path / "coordinator.toml")
    site = ["start", "--config", str(tmp_path / "site-1.toml")]
    try:
        coordinator = procs.launch("coordinator", SERVER, "start", "--config", config)
        wait_for_run(coordinator, tmp_path / "run", tmp_path / "coordinator.out")
        for i in range(2):
            procs.launch(
                f"site-{i}",
                CLIENT,
                "start",
                "--config",
                str(tmp_path / f"site-{i}.toml"),
            )
        wait_until(
            "round 1",
            lambda: any(e["event"] == "round" for e in events(tmp_path)),
            240,
            coordinator,
        )
        home = tmp_path / "state" / "site-1"
        assert flower_pids(home)  # its SuperNode, its launcher
        victim = procs.procs["site-1"]
        os.kill(victim.pid, signal.SIGKILL)  # the CLI alone
        victim.wait(timeout=10)
        wait_until("site-1's processes to die", lambda: not flower_pids(home), 15)
        crashed_after = max(e.get("round", 0) for e in events(tmp_path))

        procs.launch("site-1-again", CLIENT, *site)
        assert coordinator.wait(timeout=360) == 0, procs.output("coordinator")[-3000:]
    finally:
        survivors = procs.stop_all()
    assert not survivors
    again = procs.output("site-1-again")
    assert f"(pid {victim.pid}) did not stop cleanly" in " ".join(again.split())
    assert [r for r in _ledger_rounds(tmp_path, "site-1") if r > crashed_after + 1]
    summary = json.loads((tmp_path / "run" / "output" / "summary.json").read_text())
    assert summary["rounds_completed"] == rounds
    # One permission rule in both state folders; logs without terminal codes or
    # a line per successful request.
    for folder in (tmp_path / "run", *(tmp_path / "state").glob("site-*")):
        shared = [p for p in (folder, *folder.rglob("*")) if p.stat().st_mode & 0o077]
        assert shared == [], shared
    logs = [tmp_path / "run" / "superlink" / "superlink.log"]
    logs += list((tmp_path / "state").glob("*/supernode.log"))
    for log in logs:
        text = log.read_text(errors="replace")
        assert "\x1b[" not in text, log
    assert '" 200' not in logs[0].read_text()
