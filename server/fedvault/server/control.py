"""Our own SuperLink's Control API, through Flower's ``flwr`` CLI.

Every call runs ``flwr ... CONNECTION --format json`` with the coordinator's private
``FLWR_HOME`` (whose ``config.toml`` names the loopback Control API and our CA), and
turns a failure into one :class:`FederationError` line.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from fedvault.common.errors import FederationError
from fedvault.common.processes import flower_bin, flower_env
from fedvault.server.deploy import CONNECTION, CoordinatorLayout
from fedvault.server.registry import SiteRegistry

logger = logging.getLogger(__name__)

CLI_TIMEOUT = 60.0


def flwr_json(layout: CoordinatorLayout, *args: str) -> dict[str, Any]:
    """Run ``flwr ARGS CONNECTION --format json`` against our own Control API."""
    cmd = [flower_bin("flwr"), *args, CONNECTION, "--format", "json"]
    try:
        out = subprocess.run(  # noqa: S603 - fixed argv, no shell
            cmd,
            cwd=layout.state,
            env=flower_env(layout.flwr_home),
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
