"""The coordinator's list of sites: name, public key, Flower node id.

Flower registers SuperNodes by public key and returns a node id, but does not report
names back; fedvault keeps the mapping in ``sites.json`` in the run folder, written
atomically. A site may be listed before the coordinator runs (node id ``None``): it
is registered with Flower when the coordinator starts.

Removing a site revokes its key for good: ``sites.json`` keeps the key's fingerprint
(``revoked``), so neither ``sites add`` nor ``coordinator.toml``'s ``[sites]`` admits
it again (Flower itself never registers a key twice on one state database). A site
that is to come back makes a new key.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedvault.common.certs import fingerprint, load_site_public_key
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
    """(OpenSSH public key line without comment, its fingerprint as ``ssh-keygen
    -l`` prints it).

    Raises:
        ConfigError: the file is missing or not a site's public key.
    """
    key = load_site_public_key(path)
    line = key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return line, fingerprint(key)


def _entry(raw: dict[str, object]) -> SiteEntry:
    """A stored entry, its fingerprint recomputed from its key (older registries
    stored another format)."""
    entry = SiteEntry(**raw)  # type: ignore[arg-type]
    key = serialization.load_ssh_public_key(entry.public_key.encode())
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"site {entry.name}: not an EC key")
    return dataclasses.replace(entry, fingerprint=fingerprint(key))


@dataclass(frozen=True)
class Revocation:
    """A key removed with ``sites remove``: never admitted again."""

    name: str
    fingerprint: str
    removed_at: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.removed_at))
        return (
            f"its key {self.fingerprint} was revoked when site {self.name!r} was "
            f"removed ({when}); the site must make a new key (`fedvault client "
            "keygen`) to be added again"
        )


class SiteRegistry:
    """``sites.json``: loaded and saved whole; names and keys are unique."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sites: dict[str, SiteEntry] = {}
        self.revoked: dict[str, Revocation] = {}
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                self.sites = {s["name"]: _entry(s) for s in raw["sites"]}
                revoked = (Revocation(**r) for r in raw.get("revoked", []))
                self.revoked = {r.fingerprint: r for r in revoked}
            except (ValueError, KeyError, TypeError, UnsupportedAlgorithm) as exc:
                raise ConfigError(f"{path}: unreadable site registry ({exc})") from None

    def save(self) -> None:
        doc = {
            "sites": [
                asdict(s) for s in sorted(self.sites.values(), key=lambda s: s.name)
            ],
            "revoked": [asdict(r) for r in self.revoked.values()],
        }
        atomic_write(self.path, (json.dumps(doc, indent=2) + "\n").encode())

    def add(self, name: str, public_key: Path) -> SiteEntry:
        """List a site by its public key.

        Raises:
            ConfigError: the name is malformed or taken, the key is already
                listed, or it was revoked.
        """
        check_site_name(name)
        line, fingerprint = read_public_key(public_key)
        if fingerprint in self.revoked:
            raise ConfigError(f"site {name!r}: {self.revoked[fingerprint].describe()}")
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
        """Unlist a site and revoke its key for good.

        Raises:
            ConfigError: no site has that name.
        """
        entry = self.get(name)
        del self.sites[name]
        self.revoked[entry.fingerprint] = Revocation(
            name, entry.fingerprint, time.time()
        )
        return entry

    def name_of(self, node_id: int) -> str | None:
        for entry in self.sites.values():
            if entry.node_id == node_id:
                return entry.name
        return None
