"""Flower's Control and Runtime HTTP API on a private unix socket.

Open-source Flower 1.39 has no account authentication on its Control API
(``FLWR_OIDC_ENABLED`` needs the enterprise plugin): whoever reaches the port may
list runs, register a SuperNode key or stop a run, and a loopback port is
reachable by every account on the host. So the coordinator's Flower processes
never open that port: the SuperLink serves the API on a unix socket inside a
folder only the coordinator's account may enter (mode 0700), and every Flower
client of it (the ``flwr`` CLI that :mod:`fedvault.server.control` runs, the
SuperExec and the ServerApp the SuperLink starts) connects through that socket.
TLS still runs inside the socket, verified against the coordinator's CA.

Flower takes no socket path, so the coordinator's Flower processes get
:data:`SOCKET_ENV` and a ``sitecustomize`` (:func:`environment`) that calls
:func:`install` at interpreter start: it points ``uvicorn.run`` and Flower's
protobuf-over-HTTP client at the socket. Children inherit both.

The folder names its owner (pid and start time, :data:`OWNER_NAME`): a coordinator
killed with ``kill -9`` cannot remove its folder, so the next ``server start`` or
``server status`` removes this account's folders whose owner is gone
(:func:`remove_stale`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fedvault.common.errors import ConfigError
from fedvault.common.processes import alive

logger = logging.getLogger(__name__)

SOCKET_ENV = "FEDVAULT_CONTROL_SOCKET"
SOCKET_NAME = "control.sock"
OWNER_NAME = "owner"
PREFIX = "fedvault-control-"
_UNOWNED_GRACE_S = 60.0  # a folder just made has no owner file for a moment
_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, NUL included
_SITECUSTOMIZE = (
    "# written by fedvault: Flower's Control API on a private unix socket\n"
    "from fedvault.server._control_socket import install\n"
    "install()\n"
)


def private_socket() -> Path:
    """The socket path in a new folder of this account's, mode 0700, in the
    temporary folder (a socket path must stay under 108 bytes on Linux).

    Raises:
        ConfigError: when that path would be too long (a long ``TMPDIR``).
    """
    folder = Path(tempfile.mkdtemp(prefix=PREFIX))
    socket = folder / SOCKET_NAME
    if len(os.fsencode(socket)) > _MAX_SOCKET_PATH:
        folder.rmdir()
        raise ConfigError(
            f"the Control API socket {socket} would be too long a path for a unix "
            "socket; set TMPDIR to a shorter folder"
        )
    (folder / OWNER_NAME).write_text(_owner(os.getpid()))
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return socket


def _owner(pid: int) -> str:
    """``pid`` and its start time (clock ticks since boot, from ``/proc``; empty
    where there is none), so that a reused pid is not taken for the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        started = stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = ""
    return f"{pid} {started}".strip()


def _owner_gone(folder: Path) -> bool:
    """Whether the process that made ``folder`` is gone (its pid free, a zombie,
    or taken by a later process)."""
    try:
        recorded = (folder / OWNER_NAME).read_text().strip()
        pid = int(recorded.split()[0])
    except (OSError, ValueError, IndexError):
        return True
    if not alive(pid):
        return True
    return " " in recorded and _owner(pid) != recorded


def remove_stale(tmp: Path | None = None) -> list[Path]:
    """Remove this account's Control API folders (in ``tmp``, the temporary
    folder by default) whose owning process is gone, saying so for each; returns
    them. A folder without an owner file (made by an older fedvault) counts as
    stale once it is a minute old and nothing answers on its socket."""
    removed = []
    for folder in sorted((tmp or Path(tempfile.gettempdir())).glob(PREFIX + "*")):
        try:
            info = folder.lstat()
        except OSError:
            continue
        if not folder.is_dir() or folder.is_symlink() or info.st_uid != os.getuid():
            continue
        owner = folder / OWNER_NAME
        if owner.exists():
            stale = _owner_gone(folder)
        else:
            young = time.time() - info.st_mtime < _UNOWNED_GRACE_S
            stale = not young and not _answers(folder / SOCKET_NAME)
        if stale:
            recorded = owner.read_text().split()[:1] if owner.exists() else []
            shutil.rmtree(folder, ignore_errors=True)
            logger.warning(
                "removed %s: a Control API socket folder left by a coordinator "
                "that is gone (pid %s, killed?)",
                folder,
                recorded[0] if recorded else "unknown",
            )
            removed.append(folder)
    return removed


def _answers(socket: Path) -> bool:
    import socket as sockets

    with sockets.socket(sockets.AF_UNIX) as probe:
        probe.settimeout(1.0)
        with contextlib.suppress(OSError):
            probe.connect(str(socket))
            return True
    return False


def environment(socket: Path) -> dict[str, str]:
    """What a coordinator's Flower process needs in its environment to serve or
    reach the API through ``socket`` (made by :func:`private_socket`)."""
    path = os.pathsep.join(
        p for p in (str(socket.parent), os.environ.get("PYTHONPATH", "")) if p
    )
    return {SOCKET_ENV: str(socket), "PYTHONPATH": path}


def install() -> None:
    """Point uvicorn and Flower's HTTP client at :data:`SOCKET_ENV`'s socket
    (nothing when it is not set)."""
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return
    import httpx
    import uvicorn
    from flwr.supercore.protobuf import client as protobuf_client

    serve = uvicorn.run

    def run_on_socket(app: Any, **kwargs: Any) -> None:
        kwargs.pop("host", None)
        kwargs.pop("port", None)
        serve(app, uds=path, **kwargs)

    uvicorn.run = run_on_socket
    original = protobuf_client.ProtobufClient.__init__

    def init(self: Any, base_url: str, **kwargs: Any) -> None:
        original(self, base_url, **kwargs)
        verify = kwargs.get("verify", True)
        self._client.close()
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=path, verify=verify),
            timeout=kwargs.get("timeout", 30.0),
            follow_redirects=True,
        )

    protobuf_client.ProtobufClient.__init__ = init  # type: ignore[method-assign]
