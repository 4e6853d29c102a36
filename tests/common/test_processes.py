"""Process lifecycle with real processes: children die with their parent, one
process per state folder, leftovers are found (no Flower needed: fast)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from fedvault.common import processes
from fedvault.common.files import FolderInUseError, PidLock, lock_holder

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="parent-death signal and /proc"
)

# A parent that spawns `sleep` the way fedvault starts Flower, prints its pid,
# then waits to be killed.
PARENT = """
import sys, time
from pathlib import Path
from fedvault.common.processes import spawn
home = Path(sys.argv[1])
with open(home / "child.log", "wb") as log:
    child = spawn(["sleep", "120"], cwd=home, log=log, flwr_home=home)
print(child.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    return False


@linux_only
def test_a_spawned_process_dies_with_its_parent_even_on_sigkill(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)], stdout=subprocess.PIPE
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        os.kill(child, 0)  # it runs
        parent.kill()
        parent.wait(timeout=10)
        assert _gone(child), "the child outlived its parent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        parent.stdout.close()


HOLDER = """
import sys, time
from pathlib import Path
from fedvault.common.files import PidLock
with PidLock(Path(sys.argv[1]), what="the folder"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_one_process_per_folder_and_a_killed_holder_frees_it(tmp_path):
    path = tmp_path / "state" / "coordinator.lock"
    assert lock_holder(path) is None
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        assert lock_holder(path) == holder.pid
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid}") as caught:
            PidLock(path, what="the folder", wait=0.2).acquire()
        assert caught.value.pid == holder.pid
        holder.kill()  # no clean-up runs: the OS drops the lock
        holder.wait(timeout=10)
        assert lock_holder(path) is None
        with PidLock(path, what="the folder"):
            assert lock_holder(path) == os.getpid()
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


@linux_only
def test_leftovers_are_processes_whose_starter_is_gone(tmp_path):
    home = tmp_path / "flwr-home"
    dead = subprocess.Popen(["true"])
    dead.wait()
    env = {**os.environ, "FLWR_HOME": str(home)}
    orphan = subprocess.Popen(
        ["sleep", "60"], env={**env, processes.PARENT_ENV: str(dead.pid)}
    )
    kept = subprocess.Popen(
        ["sleep", "60"], env={**env, processes.PARENT_ENV: str(os.getpid())}
    )
    try:
        time.sleep(0.2)  # exec has happened: /proc shows sleep's environment
        found = processes.leftovers(home)
        assert [p.pid for p in found] == [orphan.pid]
        assert str(found[0]) == f"sleep 60 (pid {orphan.pid})"
        assert processes.terminate([orphan.pid]) == []
    finally:
        for proc in (orphan, kept):
            proc.kill()
            proc.wait(timeout=10)
