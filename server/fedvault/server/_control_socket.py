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
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fedvault.common.errors import ConfigError

SOCKET_ENV = "FEDVAULT_CONTROL_SOCKET"
SOCKET_NAME = "control.sock"
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
    folder = Path(tempfile.mkdtemp(prefix="fedvault-control-"))
    socket = folder / SOCKET_NAME
    if len(os.fsencode(socket)) > _MAX_SOCKET_PATH:
        folder.rmdir()
        raise ConfigError(
            f"the Control API socket {socket} would be too long a path for a unix "
            "socket; set TMPDIR to a shorter folder"
        )
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return socket


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
