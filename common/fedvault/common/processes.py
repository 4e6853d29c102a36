"""Starting and stopping Flower's processes the same way for every role.

Every Flower process fedvault starts runs with a private ``FLWR_HOME`` and with
telemetry, update checks and runtime dependency installation off: a hospital's
machine must not phone home or download packages behind its operator's back.
Each one starts in its own process session (:func:`spawn`), so that
:func:`stop_process` stops it together with every process it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO


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
    log: IO[bytes],
    flwr_home: Path,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in ``cwd`` in its own session, stdout and stderr into ``log``,
    with :func:`flower_env` for ``flwr_home`` plus ``env``; stop it with
    :func:`stop_process`.

    Raises:
        OSError: when ``cmd`` cannot be started (e.g. the program is missing).
    """
    return subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        list(cmd),
        cwd=cwd,
        env=flower_env(flwr_home, env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_process(proc: subprocess.Popen[bytes], wait: float = 5.0) -> None:
    """Stop a process started in its own session: TERM, then INT (TERM alone hangs
    while `flwr run --stream` is attached), then KILL, each with a grace period."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
