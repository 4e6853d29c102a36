"""Our own SuperLink's Control API, through Flower's ``flwr`` CLI.

Every call runs ``flwr ... CONNECTION --format json`` with the coordinator's private
``FLWR_HOME`` (whose ``config.toml`` names the Control API and our CA) through the
running coordinator's private unix socket (:mod:`fedvault.server._control_socket`;
the API opens no TCP port), and turns a failure into one :class:`FederationError`
line.

Registrations made behind fedvault's back (by anyone who reached the API) are
shown as rogue (:func:`rogue_nodes`) and, while the coordinator runs, unregistered
(:class:`RogueWatch`, run by :func:`fedvault.server.superlink.superlink`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedvault.common.certs import fingerprint
from fedvault.common.errors import FederationError
from fedvault.common.processes import flower_bin, flower_env
from fedvault.server import _control_socket
from fedvault.server.deploy import CONNECTION, CoordinatorLayout
from fedvault.server.registry import SiteRegistry

logger = logging.getLogger(__name__)

CLI_TIMEOUT = 60.0


def _socket(layout: CoordinatorLayout) -> Path:
    """The running coordinator's Control API socket."""
    try:
        live = json.loads(layout.live.read_text())
        return Path(live["control-socket"])
    except (OSError, ValueError, KeyError, TypeError):
        raise FederationError(
            f"no coordinator is running in {layout.root} (no Control API socket)"
        ) from None


def flwr_json(layout: CoordinatorLayout, *args: str) -> dict[str, Any]:
    """Run ``flwr ARGS CONNECTION --format json`` against our own Control API.

    Raises:
        FederationError: when no coordinator runs, or ``flwr`` fails or times out.
    """
    cmd = [flower_bin("flwr"), *args, CONNECTION, "--format", "json"]
    env = flower_env(layout.flwr_home, _control_socket.environment(_socket(layout)))
    try:
        out = subprocess.run(  # noqa: S603 - fixed argv, no shell
            cmd,
            cwd=layout.state,
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise FederationError(f"`flwr {args[0]}` timed out") from None
    try:
        doc: dict[str, Any] = json.loads(out.stdout)
    except json.JSONDecodeError:
        tail = (out.stdout + out.stderr).strip().splitlines()[-1:] or ["no output"]
        raise FederationError(
            f"`flwr {' '.join(args[:2])}` failed: {tail[0]}"
        ) from None
    if not doc.get("success", False):
        message = str(doc.get("error-message", "unknown error")).strip().splitlines()
        raise FederationError(f"`flwr {' '.join(args[:2])}`: {message[-1]}")
    return doc


def list_nodes(layout: CoordinatorLayout) -> list[dict[str, Any]]:
    return list(flwr_json(layout, "supernode", "list").get("nodes", []))


def register_key(layout: CoordinatorLayout, name: str, public_key: str) -> int:
    """Register one OpenSSH public key line with the SuperLink; returns its node id."""
    with tempfile.TemporaryDirectory(prefix="fedvault-key-") as tmp:
        path = Path(tmp) / "site.pub"
        path.write_text(public_key + "\n")
        doc = flwr_json(layout, "supernode", "register", str(path), "--name", name)
    return int(doc["node-id"])


def unregister_node(layout: CoordinatorLayout, node_id: int) -> None:
    flwr_json(layout, "supernode", "unregister", str(node_id))


def sync_registry(layout: CoordinatorLayout, registry: SiteRegistry) -> list[str]:
    """Make Flower's registrations match ``sites.json`` (the source of truth).

    Registers listed sites Flower does not know and unregisters nodes that are no
    longer listed (e.g. removed while the coordinator was down); returns the names
    registered.
    """
    known = {
        int(n["node-id"])
        for n in list_nodes(layout)
        if n.get("status") not in ("unregistered", "deleted")
    }
    listed = {e.node_id for e in registry.sites.values() if e.node_id is not None}
    for node_id in sorted(known - listed):
        logger.warning("unregistering node %d: not in %s", node_id, registry.path)
        unregister_node(layout, node_id)
    added = []
    for entry in list(registry.sites.values()):
        if entry.node_id is not None and entry.node_id in known:
            continue
        registry.set_node(
            entry.name, register_key(layout, entry.name, entry.public_key)
        )
        added.append(entry.name)
    registry.save()
    return added


ROGUE = "rogue: registered outside fedvault"


def rogue_nodes(
    nodes: dict[int, dict[str, Any]], registry: SiteRegistry
) -> list[dict[str, Any]]:
    """Flower's live registrations that ``sites.json`` does not list (made behind
    fedvault's back, e.g. with ``flwr supernode register``), as site rows named
    after the node, status :data:`ROGUE`."""
    listed = {e.node_id for e in registry.sites.values()}
    return [
        {
            "name": f"node {node_id} (not in {registry.path.name})",
            "node-id": node_id,
            "fingerprint": "-",
            "status": ROGUE,
            "flower-status": str(node.get("status", "unknown")),
        }
        for node_id, node in sorted(nodes.items())
        if node_id not in listed
        and node.get("status") not in ("unregistered", "deleted")
    ]


def submit(layout: CoordinatorLayout) -> int:
    doc = flwr_json(
        layout, "run", str(layout.app_dir), "--run-config", str(layout.run_config_file)
    )
    if doc.get("run-id") is None:
        raise FederationError("`flwr run` returned no run id")
    return int(doc["run-id"])


def run_status(layout: CoordinatorLayout, run_id: int) -> str:
    runs = flwr_json(layout, "ls", "--run-id", str(run_id)).get("runs", [])
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


ROGUE_GRACE_S = 30.0  # `sites add` registers with Flower a moment before it saves;
# meanwhile `server status` and `sites list` show the node as rogue


def registrations(layout: CoordinatorLayout) -> dict[int, str]:
    """Flower's live registrations, node id to key fingerprint (``SHA256:...``),
    read from the SuperLink's database (read-only, no process started).

    Raises:
        FederationError: when the database cannot be read.
    """
    query = "SELECT node_id, public_key FROM node WHERE status != 'unregistered'"
    try:
        uri = f"{layout.database.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            rows = db.execute(query).fetchall()
    except sqlite3.Error as exc:
        raise FederationError(f"cannot read {layout.database}: {exc}") from None
    return {(n + (1 << 64) if n < 0 else n): _fingerprint(key) for n, key in rows}


def _fingerprint(pem: bytes | None) -> str:
    try:
        key = serialization.load_pem_public_key(pem or b"")
    except ValueError:
        return "unknown key"
    return fingerprint(key) if isinstance(key, ec.EllipticCurvePublicKey) else "?"


class RogueWatch:
    """Unregisters, during a run, the nodes Flower knows that ``sites.json`` does
    not list (by node id or key), once one has stayed so for
    :data:`ROGUE_GRACE_S` (a site being added is listed by then)."""

    def __init__(self, layout: CoordinatorLayout) -> None:
        self.layout = layout
        self._seen: dict[int, float] = {}

    def check(self, now: float) -> list[int]:
        """One look at Flower's registrations; returns the nodes unregistered.

        Raises:
            FederationError: when Flower's state cannot be read or changed.
        """
        registry = SiteRegistry(self.layout.registry)
        ids = {e.node_id for e in registry.sites.values()}
        keys = {e.fingerprint for e in registry.sites.values()}
        found = {
            node_id: key
            for node_id, key in registrations(self.layout).items()
            if node_id not in ids and key not in keys
        }
        self._seen = {n: self._seen.get(n, now) for n in found}
        removed = []
        for node_id, since in sorted(self._seen.items()):
            if now - since >= ROGUE_GRACE_S:
                unregister_node(self.layout, node_id)
                logger.warning(
                    "unregistered node %d (key %s): registered with Flower outside "
                    "fedvault, not in %s",
                    node_id,
                    found[node_id],
                    registry.path,
                )
                removed.append(node_id)
        for node_id in removed:
            del self._seen[node_id]
        return removed
