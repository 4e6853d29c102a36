"""Starting and stopping Flower's processes the same way for every role.

Every Flower process fedvault starts runs with a private ``FLWR_HOME`` and with
telemetry, update checks and runtime dependency installation off: a hospital's
machine must not phone home or download packages behind its operator's back.
Each one starts in its own process session (:func:`spawn`), so that
:func:`stop_process` stops it together with every process it started, and, on
Linux, dies with the process that started it (a parent-death signal): a coordinator
or a site killed with SIGKILL leaves no Flower process behind. Flower's own children
watch their parent's pid and leave when it is gone.

A state folder is used by one fedvault process at a time
(:class:`fedvault.common.files.PidLock`), and :func:`leftovers` finds Flower
processes that outlived the fedvault process that started them (Linux), so that
the next command can name them.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fedvault.common.errors import FederationError
from fedvault.common.files import lock_holder
from fedvault.common.flower_logs import LogPump

PARENT_ENV = "FEDVAULT_PARENT_PID"  # set in every process spawn() starts
_PUMPS: dict[int, LogPump] = {}  # pid -> the thread writing its log
_HOMES: dict[int, Path] = {}  # pid -> the FLWR_HOME it was started with
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def flower_env(
    flwr_home: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for a Flower process (private FLWR_HOME, nothing phones home)."""
    env = dict(os.environ)
    # A gRPC Control API would be opened next to the HTTP one if this were set.
    env.pop("FLWR_INTERNAL_GRPC_CONTROL_API", None)
    env |= {
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env |= dict(extra or {})
    return env


def flower_bin(name: str) -> str:
    """A Flower console script from this interpreter's environment, else PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(
    cmd: Sequence[str],
    *,
    cwd: Path,
    log: IO[bytes] | Path,
    flwr_home: Path,
    env: Mapping[str, str] | None = None,
    quiet: Sequence[re.Pattern[bytes]] = (),
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in ``cwd`` in its own session, stdout and stderr into ``log``,
    with :func:`flower_env` for ``flwr_home`` plus ``env``; stop it with
    :func:`stop_process`. On Linux it is killed when the calling thread's process
    dies (call it from a thread that outlives the process: the main thread).

    A ``log`` path is appended to without colour codes and without the lines
    ``quiet`` matches (:class:`~fedvault.common.flower_logs.LogPump`), mode 0600;
    an open file receives the output as it is.

    Raises:
        OSError: when ``cmd`` cannot be started (e.g. the program is missing).
    """
    parent = {PARENT_ENV: str(os.getpid())}
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        list(cmd),
        cwd=cwd,
        env=flower_env(flwr_home, {**(env or {}), **parent}),
        stdout=subprocess.PIPE if isinstance(log, Path) else log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_death_signal(os.getpid()),  # prctl only: no locks, no imports
    )
    _HOMES[proc.pid] = flwr_home
    if isinstance(log, Path) and proc.stdout is not None:
        _PUMPS[proc.pid] = pump = LogPump(proc.stdout, log, quiet)
        pump.start()
    return proc


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, looked up before any fork (None where there is none)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def _death_signal(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with ``parent``; None off Linux."""
    prctl = _prctl()
    if prctl is None:
        return None

    def arm() -> None:  # runs in the child between fork and exec: no imports
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


def die_with_parent() -> None:
    """Make the calling process die when its parent does (Linux; a no-op elsewhere).

    For a process that forks children without exec (fedvault's ClientApp launcher).
    """
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def stop_process(proc: subprocess.Popen[bytes], wait: float = 5.0) -> None:
    """Stop a process started in its own session: TERM, then INT (TERM alone hangs
    while `flwr run --stream` is attached), then KILL, each with a grace period."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    _kill_group(proc.pid)  # what it started in its session and left (Ray's agents)
    home = _HOMES.pop(proc.pid, None)
    others = [pid for pid, h in list(_HOMES.items()) if h == home and alive(pid)]
    if home is not None and not others:  # the last one running with this home
        _stop_family(home, wait)  # Flower's own children, in sessions of their own
    pump = _PUMPS.pop(proc.pid, None)
    if pump is not None:  # the last lines are in the log file once this returns
        pump.join(timeout=wait)


@dataclass(frozen=True)
class Leftover:
    """A process :func:`spawn` started whose starter is gone."""

    pid: int
    command: str

    def __str__(self) -> str:
        return f"{self.command} (pid {self.pid})"


def _environ(pid_dir: Path) -> dict[str, str]:
    raw = (pid_dir / "environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def _command(pid_dir: Path) -> str:
    argv = (pid_dir / "cmdline").read_bytes().split(b"\0")
    words = [Path(a.decode(errors="replace")).name for a in argv if a][:4]
    if words and words[0].startswith("python"):  # python -P -m fedvault...: the module
        words = [w for w in words[1:] if not w.startswith("-")][:1] or words
    return " ".join(words[:2])[:80] or "?"


def _family(flwr_home: Path) -> list[int]:
    """Live processes this process started with ``flwr_home``, and theirs (Linux)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            env = _environ(entry)
            if (
                env.get("FLWR_HOME") == str(flwr_home)
                and env.get(PARENT_ENV) == str(os.getpid())
                and alive(int(entry.name))
            ):
                found.append(int(entry.name))
    return found


def _kill_group(pgid: int) -> None:
    """SIGKILL every process still in process group ``pgid`` (Linux: read from
    ``/proc``, so no other group is ever signalled, even if the number is reused).
    Ray's dashboard and runtime-env agents ignore the signals that stop Flower and
    outlive it otherwise."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # fields after the parenthesised command: state, ppid, pgrp, ...
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                os.kill(int(entry.name), signal.SIGKILL)


def kill_processes_in(folder: Path) -> int:
    """SIGKILL every process whose working folder is ``folder`` or inside it (a
    private work folder only fedvault's children run in: Ray's agents, whose
    environment and group are their own, are found this way). Linux only; returns
    how many were killed."""
    proc, root, killed = Path("/proc"), str(folder.resolve()), 0
    if not proc.is_dir():
        return 0
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cwd = os.readlink(entry / "cwd").removesuffix(" (deleted)")
            if cwd == root or cwd.startswith(root + os.sep):
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
    return killed


def _stop_family(flwr_home: Path, wait: float) -> None:
    """Once a Flower process is stopped, wait up to ``wait`` s for the processes
    it started (they leave when their parent is gone), then kill what remains: a
    clean stop leaves nothing for the next command to find."""
    deadline = time.monotonic() + wait
    while (left := _family(flwr_home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def leftovers(flwr_home: Path) -> list[Leftover]:
    """Processes started by :func:`spawn` with ``flwr_home`` (or by one of them)
    whose fedvault process is gone: left behind by a crash or a SIGKILL where no
    parent-death signal reached them. Linux only (reads ``/proc``); [] elsewhere."""
    proc = Path("/proc")
    if not (proc / "self" / "environ").exists():
        return []
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            env = _environ(entry)
            if env.get("FLWR_HOME") != str(flwr_home) or PARENT_ENV not in env:
                continue
            if not _started_before(int(env[PARENT_ENV]), entry):
                found.append(Leftover(int(entry.name), _command(entry)))
    return sorted(found, key=lambda p: p.pid)


def _start_tick(pid_dir: Path) -> int:
    """When the process started (clock ticks after boot, ``/proc/PID/stat``)."""
    stat = (pid_dir / "stat").read_text()
    return int(stat.rpartition(")")[2].split()[19])


def _started_before(parent: int, child: Path) -> bool:
    """Whether ``parent`` lives and is older than ``child``: the process that
    started it, not a later one that reuses its pid."""
    try:
        return _start_tick(Path("/proc") / str(parent)) <= _start_tick(child)
    except (OSError, ValueError, IndexError):
        return False


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    return True


def terminate(pids: Sequence[int], wait: float = 5.0) -> list[int]:
    """TERM, then KILL after ``wait`` s, each process in ``pids``; returns those
    still alive at the end (not ours to signal, or unkillable)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
    return [p for p in pids if alive(p)]


def describe(processes: Sequence[Leftover]) -> str:
    """``a (pid 1), b (pid 2)``."""
    return ", ".join(str(p) for p in processes)


def stop_folder(lock: Path, flwr_home: Path, *, what: str, timeout: float) -> list[str]:
    """Stop the process holding the :class:`PidLock` ``lock`` with SIGTERM (it stops
    as on Ctrl-C), wait up to ``timeout`` s for it to let go, then stop the
    :func:`leftovers` of ``flwr_home``. Returns what was stopped ([]: nothing ran).

    Raises:
        FederationError: a process did not stop in time, or the lock's holder is
            unknown.
    """
    stopped = []
    pid = lock_holder(lock)
    if pid is not None and pid != os.getpid():
        if pid == 0:
            raise FederationError(f"{lock} is held by a process of unknown pid")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while lock_holder(lock) is not None:
            if time.monotonic() > deadline:
                raise FederationError(
                    f"{what} (pid {pid}) did not stop within {timeout:g} s"
                )
            time.sleep(0.2)
        stopped.append(f"{what} (pid {pid})")
    left = leftovers(flwr_home)
    if left:
        if terminate([p.pid for p in left]):
            raise FederationError(f"could not stop {describe(left)}")
        stopped.append(describe(left))
    return stopped
