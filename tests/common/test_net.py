"""Addresses as written in a coordinator's or a site's TOML file."""

import pytest

from fedvault.common.errors import ConfigError
from fedvault.common.net import split_address


@pytest.mark.parametrize(
    ("address", "parts"),
    [
        ("coordinator.example.org:9092", ("coordinator.example.org", 9092)),
        ("127.0.0.1:9094", ("127.0.0.1", 9094)),
        ("[::1]:9094", ("::1", 9094)),
        ("[2001:db8::7]:65535", ("2001:db8::7", 65535)),
        ("::1:9094", ("::1", 9094)),  # no brackets: up to the last ':'
    ],
)
def test_host_and_port_ipv6_in_brackets(address, parts):
    assert split_address(address, key="fleet-address") == parts


@pytest.mark.parametrize(
    "address",
    [
        "no-port",
        "host:",
        ":9092",
        "[]:9092",
        "host:0",
        "host:65536",
        "host:x1",
        "[::1]",
    ],
)
def test_a_bad_address_names_its_key(address):
    with pytest.raises(ConfigError, match=r"^runtime-address: expected HOST:PORT"):
        split_address(address, key="runtime-address")
