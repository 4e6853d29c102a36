"""A coordinator's run folder over its life: one state, one message, used alike by
`start`, `resume` and `status`; one coordinator per folder; nothing left running
after a SIGKILL, and what an earlier coordinator left behind is named."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from consortium import (
    coordinator_toml,
    flower_pids,
    run_fedvault,
    stop_all,
    wait_for_run,
)

from fedvault.common import processes
from fedvault.server import coordinator as coord
from fedvault.server.deploy import CoordinatorLayout, load_coordinator_config

ROUNDS = 3


def _fedvault(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    return run_fedvault(monkeypatch, capsys, *args)


def _server(monkeypatch, capsys, command: str, config: Path, *extra: str):
    """`fedvault server COMMAND --config CONFIG EXTRA...`."""
    return _fedvault(
        monkeypatch, capsys, "server", command, "--config", str(config), *extra
    )


def _write(layout: CoordinatorLayout, *, rounds: int, **files: str) -> None:
    layout.output.mkdir(parents=True)
    layout.state.mkdir(parents=True)
    events = [{"event": "start"}] + [
        {"event": "round", "round": r} for r in range(1, rounds + 1)
    ]
    text = "".join(json.dumps(e) + "\n" for e in events)
    (layout.output / "progress.jsonl").write_text(text + '{"event": "rou')  # torn
    for name, content in files.items():
        path = layout.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


STATES = {
    "stopped": (
        {"output/checkpoint.pt": "x", "superlink/run-config.toml": 'run-key = "k"'},
        ["stopped after round 2 of 3", "server resume", "start --restart"],
    ),
    "failed": ({}, ["cannot be resumed", "no round completed", "start --restart"]),
    "completed": (
        {"output/summary.json": '{"status": "completed", "rounds_completed": 3}'},
        ["holds a completed run (3 rounds", "start --restart"],
    ),
    "stopped-early": (
        {"output/summary.json": '{"status": "stopped", "stop_reason": "1 site"}'},
        ["cannot be resumed", "stopped early: 1 site", "start --restart"],
    ),
}


@pytest.mark.parametrize("state", sorted(STATES))
def test_start_resume_and_status_say_the_same_thing(
    monkeypatch, capsys, tmp_path, state
):
    config = coordinator_toml(tmp_path, rounds=ROUNDS)
    layout = CoordinatorLayout(tmp_path / "run")
    files, needles = STATES[state]
    _write(layout, rounds=2 if state == "stopped" else 0, **files)
    code, status = _server(monkeypatch, capsys, "status", config)
    assert code == 0
    message = status.split(": ", 1)[1].split(" Sites")[0]
    for needle in needles:
        assert needle in message
    commands = [["start"], ["resume"], ["start", "--resume-stopped"]]
    for command in commands:
        if state == "stopped" and command != ["start"]:
            continue  # it would resume
        code, err = _fedvault(
            monkeypatch,
            capsys,
            "server",
            *command,
            "--config",
            str(config),
            "--insecure",
        )
        assert code == 2 and err.endswith(f"error: {message}"), (command, err)


@pytest.mark.parametrize(
    ("state", "resumed"), [("stopped", True), ("new", False), ("stopped-x", False)]
)
def test_start_resume_stopped_resumes_only_a_stopped_run(
    monkeypatch, tmp_path, state, resumed
):
    cfg = load_coordinator_config(coordinator_toml(tmp_path, rounds=ROUNDS))
    layout = CoordinatorLayout(cfg.run_dir)
    if state.startswith("stopped"):
        _write(layout, rounds=2, **STATES["stopped"][0])
    ran = []
    monkeypatch.setattr(
        coord, "_run", lambda cfg, layout, values, **kw: ran.append(values)
    )
    coord.start(cfg, resume_stopped=True, restart=state == "stopped-x")
    assert ran[0]["resume"] is resumed
    assert (ran[0]["run-key"] == "k") is resumed


def test_a_new_folder_has_nothing_to_resume(monkeypatch, capsys, tmp_path):
    config = coordinator_toml(tmp_path, rounds=ROUNDS)
    code, err = _server(monkeypatch, capsys, "resume", config)
    assert code == 2
    assert "holds no run yet; `fedvault server start --config" in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_leftover_flower_processes_are_named_and_stopped(monkeypatch, capsys, tmp_path):
    config = coordinator_toml(tmp_path, rounds=ROUNDS)
    layout = CoordinatorLayout(tmp_path / "run")
    gone = subprocess.Popen(["true"])
    gone.wait()
    env = {
        **os.environ,
        "FLWR_HOME": str(layout.flwr_home),
        processes.PARENT_ENV: str(gone.pid),
    }
    orphan = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
    try:
        time.sleep(0.3)
        code, err = _server(monkeypatch, capsys, "start", config, "--insecure")
        assert code == 2
        assert f"sleep 60 (pid {orphan.pid})" in err and "server stop" in err
        assert not layout.log.exists()  # no SuperLink was started beside it
        code, out = _server(monkeypatch, capsys, "stop", config)
        assert code == 0 and f"stopped sleep 60 (pid {orphan.pid})" in out
        assert orphan.wait(timeout=10) is not None
    finally:
        orphan.kill()
        orphan.wait(timeout=10)


def test_a_port_in_use_is_named_before_flower_starts(monkeypatch, capsys, tmp_path):
    config = coordinator_toml(tmp_path, rounds=ROUNDS)
    cfg = load_coordinator_config(config)
    host, port = cfg.options.fleet_address.split(":")
    with socket.socket() as sock:
        sock.bind((host, int(port)))
        sock.listen()
        code, err = _server(monkeypatch, capsys, "start", config, "--insecure")
    assert code == 2
    assert f"fleet-address: {cfg.options.fleet_address} is already in use" in err
    assert not CoordinatorLayout(cfg.run_dir).log.exists()


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_sigkill_of_the_coordinator_leaves_no_flower_process(
    monkeypatch, capsys, tmp_path
):
    config = coordinator_toml(tmp_path, rounds=ROUNDS)
    cfg = load_coordinator_config(config)
    args = ("server", "start", "--config", str(config), "--insecure")
    with (tmp_path / "coordinator.out").open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from fedvault.common.cli import main; main()",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_run(proc, cfg.run_dir, tmp_path / "coordinator.out")
        assert flower_pids(cfg.run_dir)  # SuperLink, SuperExec, ServerApp
        # One coordinator per run folder: a second command refuses up front.
        for command in ("start", "resume"):
            code, err = _server(monkeypatch, capsys, command, config)
            assert code == 2
            assert f"a coordinator (pid {proc.pid}) is running" in err
            assert "server stop" in err
        code, out = _server(monkeypatch, capsys, "status", config)
        assert out.startswith(f"running: a coordinator (pid {proc.pid})")

        os.kill(proc.pid, signal.SIGKILL)  # the CLI alone, as the OOM killer would
        proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while flower_pids(cfg.run_dir) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert flower_pids(cfg.run_dir) == [], "Flower outlived its coordinator"

        code, out = _server(monkeypatch, capsys, "status", config, "--format", "json")
        status = json.loads(out)
        assert status["running"] is False and status["leftovers"] == []
        assert status["state"] == "failed"
        crash = f"the coordinator (pid {proc.pid}) ended without stopping it"
        assert crash in status["message"]
        code, err = _server(monkeypatch, capsys, "start", config, "--insecure")
        assert code == 2 and crash in err and "start --restart" in err
    finally:
        stop_all([proc], tmp_path)
