"""The coordinator's users (``users.json``): who is enrolled, with which role and
certificate, and who is revoked.

A call is served only for a certificate whose serial number is the one enrolled
for its user, whose role matches, and whose user is not revoked. The file is read
afresh on every call, so a revocation (over the service or with
``fedvault server users revoke``) refuses the user's very next call.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fedvault.common.errors import ConfigError
from fedvault.common.files import atomic_write
from fedvault.common.user_certs import Role, UserIdentity, check_role
from fedvault.server.rbac import AccessDeniedError


class UnknownUserError(AccessDeniedError):
    """The certificate names no enrolled, unrevoked user."""


@dataclass(frozen=True)
class UserEntry:
    name: str
    role: Role
    serial: str
    revoked: bool = False
    added: str = ""


class UserRegistry:
    """``users.json`` under the coordinator's governance folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.users: dict[str, UserEntry] = {}
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                for name, entry in raw["users"].items():
                    role = check_role(str(entry["role"]))
                    self.users[name] = UserEntry(
                        name,
                        role,
                        str(entry["serial"]),
                        bool(entry.get("revoked", False)),
                        str(entry.get("added", "")),
                    )
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(f"{path}: not a user registry ({exc})") from None

    def save(self) -> None:
        doc = {"users": {n: asdict(e) for n, e in sorted(self.users.items())}}
        atomic_write(self.path, (json.dumps(doc, indent=2) + "\n").encode())

    def add(self, identity: UserIdentity) -> UserEntry:
        """Enroll the user a checked certificate names.

        Raises:
            ConfigError: the user is enrolled and not revoked, or this very
                certificate was revoked.
        """
        current = self.users.get(identity.name)
        if current is not None and not current.revoked:
            raise ConfigError(
                f"user {identity.name!r} is already enrolled; revoke it first"
            )
        if current is not None and current.serial == identity.serial:
            raise ConfigError(
                f"user {identity.name!r}: this certificate was revoked; issue a new one"
            )
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        entry = UserEntry(identity.name, identity.role, identity.serial, added=now)
        self.users[identity.name] = entry
        return entry

    def revoke(self, name: str) -> UserEntry:
        """Revoke ``name``: every later call with its certificate is refused.

        Raises:
            ConfigError: no such user.
        """
        entry = self.users.get(name)
        if entry is None:
            raise ConfigError(f"user {name!r} is not enrolled")
        revoked = UserEntry(entry.name, entry.role, entry.serial, True, entry.added)
        self.users[name] = revoked
        return revoked

    def authenticate(self, identity: UserIdentity) -> UserEntry:
        """The enrolled user behind a checked certificate.

        Raises:
            UnknownUserError: not enrolled, revoked, another certificate, or a role that
                is not the enrolled one.
        """
        entry = self.users.get(identity.name)
        if entry is None:
            raise UnknownUserError(f"user {identity.name!r} is not enrolled")
        if entry.revoked:
            raise UnknownUserError(f"user {identity.name!r} is revoked")
        if entry.serial != identity.serial or entry.role != identity.role:
            raise UnknownUserError(
                f"user {identity.name!r}: this certificate is not the enrolled one"
            )
        return entry
