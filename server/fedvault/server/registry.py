"""The coordinator's list of sites: name, public key, Flower node id.

Flower registers SuperNodes by public key and returns a node id, but does not report
names back; fedvault keeps the mapping in ``sites.json`` in the run folder, written
atomically. A site may be listed before the coordinator runs (node id ``None``): it
is registered with Flower when the coordinator starts.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from fedvault.common.certs import load_site_public_key
from fedvault.common.errors import ConfigError
from fedvault.common.files import atomic_write

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class SiteEntry:
    """One registered (or to-be-registered) site."""

    name: str
    public_key: str
    fingerprint: str
    node_id: int | None = None
    added_at: float = 0.0


def check_site_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"site name {name!r}: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return name


def read_public_key(path: Path) -> tuple[str, str]:
    """(OpenSSH public key line without comment, SHA-256 fingerprint)."""
    key = load_site_public_key(path)
    line = key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return line, "SHA256:" + hashlib.sha256(line.encode()).hexdigest()[:32]


class SiteRegistry:
    """``sites.json``: loaded and saved whole; names and keys are unique."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sites: dict[str, SiteEntry] = {}
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                self.sites = {s["name"]: SiteEntry(**s) for s in raw["sites"]}
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}: unreadable site registry ({exc})") from None

    def save(self) -> None:
        doc = {
            "sites": [
                asdict(s) for s in sorted(self.sites.values(), key=lambda s: s.name)
            ]
        }
        atomic_write(self.path, (json.dumps(doc, indent=2) + "\n").encode())

    def add(self, name: str, public_key: Path) -> SiteEntry:
        check_site_name(name)
        line, fingerprint = read_public_key(public_key)
        if name in self.sites:
            raise ConfigError(f"site {name!r} is already registered")
        for other in self.sites.values():
            if other.fingerprint == fingerprint:
                raise ConfigError(
                    f"this public key is already registered as {other.name!r}"
                )
        entry = SiteEntry(name, line, fingerprint, None, time.time())
        self.sites[name] = entry
        return entry

    def get(self, name: str) -> SiteEntry:
        try:
            return self.sites[name]
        except KeyError:
            raise ConfigError(f"no site named {name!r}") from None

    def set_node(self, name: str, node_id: int | None) -> None:
        entry = self.get(name)
        self.sites[name] = SiteEntry(
            entry.name, entry.public_key, entry.fingerprint, node_id, entry.added_at
        )

    def remove(self, name: str) -> SiteEntry:
        entry = self.get(name)
        del self.sites[name]
        return entry

    def name_of(self, node_id: int) -> str | None:
        for entry in self.sites.values():
            if entry.node_id == node_id:
                return entry.name
        return None
