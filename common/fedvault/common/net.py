"""Network addresses as written in a coordinator's or a site's TOML file."""

from __future__ import annotations

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
