"""Runs held for the site operator's approval (``[approval] hold = true``).

A run the operator has not decided on is declined, at every message, with reason
``policy`` and a detail starting ``held:`` (:data:`HELD_PREFIX`); the first time,
the run's full settings (its run config, less a simulation's per-site keys) are
recorded in ``STATE/pending/RUN_ID.json`` (mode 0600). The coordinator asks a held
site again until it answers or its wait for sites ends.

``fedvault client pending`` lists the held runs, ``client plan RUN_ID`` what one
would cost, ``client approve RUN_ID [--reject]`` records the operator's decision
in ``STATE/approvals.jsonl``: a hash-chained log (:mod:`fedvault.common.chainlog`)
whose entries name the run, the decision and the SHA-256 of the settings decided
on. A decision covers those settings only; a log that does not verify approves
nothing.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedvault.common.chainlog import ChainLog
from fedvault.common.errors import ConfigError, IntegrityError
from fedvault.common.files import atomic_write
from fedvault.common.protocol import (
    HELD_PREFIX,
    RUN_KEY,
    RUN_TARGET,
    SIMULATED_SITE_PREFIX,
    Decline,
)

PENDING_DIR = "pending"
DECISIONS_FILE = "approvals.jsonl"
APPROVED, REJECTED = "approved", "rejected"


@dataclass(frozen=True)
class HeldRun:
    """A run held at this site: its ids, its settings and their digest."""

    run_id: str
    settings: dict[str, Any]
    received: str

    @property
    def run_key(self) -> str:
        return str(self.settings.get(RUN_KEY) or self.run_id)

    @property
    def target(self) -> str:
        return str(self.settings.get(RUN_TARGET, "target"))

    @property
    def digest(self) -> str:
        return settings_digest(self.settings)

    def to_dict(self) -> dict[str, Any]:
        """As ``client pending --format json`` prints it."""
        return {
            "run-id": self.run_id,
            "run-key": self.run_key,
            "received": self.received,
            "settings-sha256": self.digest,
            "settings": self.settings,
        }


def run_settings(run_config: Any) -> dict[str, Any]:
    """A run's settings as the site records them: its run config, less the keys
    a simulation passes to each simulated site (their own paths)."""
    return {
        str(k): v
        for k, v in sorted(dict(run_config).items())
        if not str(k).startswith(SIMULATED_SITE_PREFIX)
    }


def settings_digest(settings: dict[str, Any]) -> str:
    """SHA-256 of the settings as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def held_detail(run_id: str) -> str:
    """The decline detail of a held run."""
    return (
        f"{HELD_PREFIX} waiting for the site operator's approval "
        f"(fedvault client approve {run_id})"
    )


def _decisions(state_dir: Path) -> ChainLog:
    return ChainLog(
        state_dir / DECISIONS_FILE,
        label="approval log",
        verify_hint="fedvault client pending",
    )


def decision(state_dir: Path, run_id: str, digest: str) -> str | None:
    """The operator's last decision on run ``run_id`` with settings ``digest``
    (``None``: none yet).

    Raises:
        IntegrityError: the approval log does not verify.
    """
    log = _decisions(state_dir)
    log.verify()
    found = None
    for entry in log.entries():
        if entry.get("run-id") == run_id and entry.get("settings") == digest:
            found = str(entry.get("decision"))
    return found


def _pending_file(state_dir: Path, run_id: str) -> Path:
    if not run_id or not run_id.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"run id {run_id!r}: expected letters, digits, - or _")
    return state_dir / PENDING_DIR / f"{run_id}.json"


def check_hold(state_dir: Path, run_id: str, run_config: Any) -> Decline | None:
    """``None`` when the operator approved this run (these settings), else the
    decline: held (the settings recorded as pending) or rejected.

    Raises:
        OSError: the pending record cannot be written.
    """
    settings = run_settings(run_config)
    try:
        decided = decision(state_dir, run_id, settings_digest(settings))
    except IntegrityError as exc:
        return Decline("policy", f"the site's approval log does not verify: {exc}")
    if decided == APPROVED:
        return None
    if decided == REJECTED:
        return Decline("policy", "the site's operator rejected the run")
    path = _pending_file(state_dir, run_id)
    if not path.exists():
        now = datetime.now(UTC).isoformat(timespec="seconds")
        doc = {"run-id": run_id, "received": now, "settings": settings}
        atomic_write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    return Decline("policy", held_detail(run_id))


def read_held(state_dir: Path, run_id: str) -> HeldRun:
    """The recorded run ``run_id``.

    Raises:
        ConfigError: no run of that id was held at this site.
    """
    path = _pending_file(state_dir, run_id)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no run {run_id} is held at this site") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    return HeldRun(str(doc["run-id"]), dict(doc["settings"]), str(doc["received"]))


def pending_runs(state_dir: Path) -> list[HeldRun]:
    """The held runs the operator has not decided on, oldest first.

    Raises:
        ConfigError: a record cannot be read.
        IntegrityError: the approval log does not verify.
    """
    folder = state_dir / PENDING_DIR
    held = [read_held(state_dir, p.stem) for p in sorted(folder.glob("*.json"))]
    undecided = [h for h in held if decision(state_dir, h.run_id, h.digest) is None]
    return sorted(undecided, key=lambda h: h.received)


def decide(state_dir: Path, run_id: str, *, approve: bool) -> dict[str, Any]:
    """Record the operator's decision on held run ``run_id``; returns the entry.

    Raises:
        ConfigError: no run of that id was held at this site.
        IntegrityError: the approval log does not verify.
        OSError: the log cannot be written.
    """
    held = read_held(state_dir, run_id)
    log = _decisions(state_dir)
    log.verify()
    return log.append(
        {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "who": getpass.getuser(),
            "run-id": held.run_id,
            "run-key": held.run_key,
            "decision": APPROVED if approve else REJECTED,
            "settings": held.digest,
        }
    )
