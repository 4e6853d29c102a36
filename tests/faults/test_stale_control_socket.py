"""A coordinator killed with kill -9 cannot remove its Control API socket folder
(issue 14): the next `server start` or `server status` removes this account's
folders whose owner is gone, saying so, and leaves a live coordinator's alone."""

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
from consortium import coordinator_toml, wait_for_run

from fedvault.server import _control_socket
from fedvault.server.deploy import load_coordinator_config

FEDVAULT = Path(sys.executable).parent / "fedvault"
OWNER = (
    "from fedvault.server._control_socket import private_socket; import time; "
    "print(private_socket(), flush=True); time.sleep(120)"
)


def _folder_owner(tmp: Path) -> tuple[subprocess.Popen[str], Path]:
    """A real process that made a socket folder in ``tmp`` and keeps running."""
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        env=os.environ | {"TMPDIR": str(tmp)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip()).parent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real processes")
def test_folders_of_killed_owners_are_removed_and_live_ones_kept(tmp_path, caplog):
    tmp = tmp_path / "t"
    tmp.mkdir()
    killed, stale = _folder_owner(tmp)
    living, kept = _folder_owner(tmp)
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=10)
        assert stale.is_dir() and kept.is_dir()
        assert _control_socket.remove_stale(tmp) == [stale]
        assert not stale.exists() and kept.is_dir()
        said = caplog.text
        assert f"removed {stale}" in said and f"pid {killed.pid}" in said
        assert _control_socket.remove_stale(tmp) == []  # nothing more to do
    finally:
        for proc in (killed, living):
            proc.kill()
            proc.communicate(timeout=10)
    assert _control_socket.remove_stale(tmp) == [kept]


def _flower_pids(root: Path) -> list[int]:
    marker = f"FLWR_HOME={root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real processes")
def test_server_status_removes_the_folder_of_a_coordinator_killed_with_9(tmp_path):
    config = coordinator_toml(tmp_path)
    cfg = load_coordinator_config(config)
    code = (
        "import sys; from fedvault.server.server_cli import server_app; "
        "server_app(sys.argv[1:])"
    )
    with (tmp_path / "coordinator.out").open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                "start",
                "--config",
                str(config),
                "--insecure",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_run(proc, cfg.run_dir, tmp_path / "coordinator.out")
        folder = Path(
            json.loads((cfg.run_dir / "coordinator.json").read_text())["control-socket"]
        ).parent
        os.kill(proc.pid, signal.SIGKILL)  # the coordinator alone: no cleanup
        proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while _flower_pids(cfg.run_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert folder.is_dir()  # left behind
        status = subprocess.run(  # the CLI as a user runs it: its warnings shown
            [FEDVAULT, "server", "status", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        said = " ".join((status.stdout + status.stderr).split())
        assert status.returncode == 0, said
        assert f"removed {folder}" in said and f"pid {proc.pid}" in said
        assert not folder.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _flower_pids(cfg.run_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
