"""Who may call what on the coordinator's control plane: one table, deny by default.

Each method of the ``Coordinator`` service (``protos/fedvault/proto/coordinator.proto``)
maps each role allowed to call it to ``"all"`` (everything the method covers) or
``"own"`` (only the caller's own runs). A role or method missing from the table is
refused. docs/governance.md prints the same table; a test checks every (role, method)
pair of one against the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from fedvault.common.errors import FedVaultError
from fedvault.common.user_certs import ROLES

Scope = Literal["all", "own"]


class AccessDeniedError(FedVaultError, PermissionError):
    """The caller's role may not call this method (or not on this object)."""


TABLE: Mapping[str, Mapping[str, Scope]] = {
    "SubmitRun": {"researcher": "own"},
    "ListRuns": {"admin": "all", "researcher": "own", "auditor": "all"},
    "GetRun": {"admin": "all", "researcher": "own", "auditor": "all"},
    "WatchRun": {"admin": "all", "researcher": "own", "auditor": "all"},
    "StopRun": {"admin": "all", "researcher": "own"},
    "ListSites": {"admin": "all", "researcher": "all", "auditor": "all"},
    "AddSite": {"admin": "all"},
    "RemoveSite": {"admin": "all"},
    "ListUsers": {"admin": "all", "auditor": "all"},
    "AddUser": {"admin": "all"},
    "RevokeUser": {"admin": "all"},
    "ReadAudit": {"admin": "all", "auditor": "all"},
}


def authorize(role: str, method: str) -> Scope:
    """The scope ``role`` has on ``method``.

    Raises:
        AccessDeniedError: the table does not grant ``method`` to ``role``.
    """
    if role not in ROLES:
        raise AccessDeniedError(f"unknown role {role!r}")
    scope = TABLE.get(method, {}).get(role)
    if scope is None:
        raise AccessDeniedError(f"role {role!r} may not call {method}")
    return scope


def check_owner(scope: Scope, *, caller: str, owner: str, what: str) -> None:
    """Refuse a caller of scope ``own`` an object ``owner`` holds.

    Raises:
        AccessDeniedError: naming ``what``, without saying whether it exists.
    """
    if scope == "own" and caller != owner:
        raise AccessDeniedError(f"{what}: not yours to see")
