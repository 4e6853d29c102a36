"""Network addresses as written in a coordinator's or a site's TOML file."""

from __future__ import annotations

import errno
import ipaddress
import socket

from fedvault.common.errors import ConfigError


def split_address(address: str, *, key: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` into its host (brackets removed) and port.

    An IPv6 address without brackets is read up to its last ``:`` (``::1:9094`` is
    host ``::1``, port 9094).

    Raises:
        ConfigError: naming ``key``, when there is no port, the port is not in
            1..65535, or the host is empty.
    """
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdecimal() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: expected HOST:PORT, got {address!r}")
    return host, int(port)


def loopback_address(address: str, *, key: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` on loopback (127.0.0.1, ::1 or localhost), for an endpoint
    without authentication (``what`` names it in the refusal).

    Raises:
        ConfigError: naming ``key``: not HOST:PORT, or not loopback.
    """
    host, port = split_address(address, key=key)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"{key}: {host!r} must be a loopback address (127.0.0.1, ::1 or "
            f"localhost): {what} has no authentication"
        )
    return host, port


def port_in_use(address: str, *, key: str) -> bool:
    """Whether a program already listens on the local ``HOST:PORT`` ``address``
    (what a server about to bind it would find). A port held only by connections
    closing down (TIME_WAIT) counts as free, as it does for a server.

    Raises:
        ConfigError: naming ``key``, when ``address`` is not ``HOST:PORT``.
    """
    host, port = split_address(address, key=key)
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return False  # not a local name: the server's own start-up will say so
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False
