"""The runs submitted to the coordinator service (``runs.json``) and how each is
started, followed and stopped through Flower's Control API (loopback only).

A submitted study is turned into a ServerApp run config exactly as
``fedvault server start`` does (:func:`fedvault.server.deploy.run_config`), with its
own app folder and output folder under ``governance/runs/RUN_KEY/``, and submitted
with ``flwr run`` to the SuperLink the service keeps up. The run's id is Flower's.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fedvault.common.errors import ConfigError, FederationError
from fedvault.common.files import atomic_write
from fedvault.server import _flower
from fedvault.server.audit_log import AuditLog, digest
from fedvault.server.control import flwr_json, run_status
from fedvault.server.deploy import CoordinatorConfig, CoordinatorLayout, run_config
from fedvault.server.received import audit_received
from fedvault.server.rundir import PROGRESS_FILE, SUMMARY_FILE
from fedvault.server.runstate import read_events

_LOCK = threading.Lock()  # one writer of runs.json in this process
_STATES = {
    "finished:completed": "completed",
    "finished:failed": "failed",
    "finished:stopped": "stopped",
}


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    owner: str
    run_key: str
    rounds: int
    submitted: str
    status: str = "submitted"


COORDINATOR = "coordinator@localhost"


class RunBook:
    """The service's runs: ``governance/runs.json`` and one folder per run; with
    an audit log, the end of each run (completed, failed, stopped) is appended to
    it once, by whichever caller sees it first."""

    def __init__(
        self, root: Path, layout: CoordinatorLayout, audit: AuditLog | None = None
    ) -> None:
        self.root = root
        self.layout = layout
        self.file = root / "runs.json"
        self.audit = audit
        self._lock = _LOCK

    def _load(self) -> dict[str, RunRecord]:
        if not self.file.exists():
            return {}
        raw = json.loads(self.file.read_text())
        return {k: RunRecord(**v) for k, v in raw.items()}

    def _save(self, runs: dict[str, RunRecord]) -> None:
        doc = {k: asdict(v) for k, v in runs.items()}
        atomic_write(self.file, (json.dumps(doc, indent=2) + "\n").encode())

    def folder(self, record: RunRecord) -> Path:
        return self.root / "runs" / record.run_key

    def submit(self, study: CoordinatorConfig, *, owner: str) -> RunRecord:
        """Start ``study`` (already checked against the limits) for ``owner``.

        Raises:
            FederationError: Flower refused the run.
        """
        run_key = uuid.uuid4().hex
        folder = self.root / "runs" / run_key
        output = folder / "output"
        output.mkdir(parents=True)
        values = run_config(study, output.resolve(), run_key=run_key)
        app_dir, config_file = folder / "app", folder / "run-config.toml"
        _flower.write_app(app_dir, config_file, values, name="fedvault-study")
        doc = flwr_json(
            self.layout, "run", str(app_dir), "--run-config", str(config_file)
        )
        if doc.get("run-id") is None:
            raise FederationError("`flwr run` returned no run id")
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        record = RunRecord(
            str(doc["run-id"]), owner, run_key, study.training.rounds, now, "running"
        )
        with self._lock:
            runs = self._load()
            runs[record.run_id] = record
            self._save(runs)
        return record

    def all(self) -> list[RunRecord]:
        with self._lock:
            return list(self._load().values())

    def get(self, run_id: str) -> RunRecord:
        """The run ``run_id``.

        Raises:
            ConfigError: no such run.
        """
        record = self._load().get(run_id)
        if record is None:
            raise ConfigError(f"run {run_id!r}: no such run")
        return record

    def refresh(self, record: RunRecord) -> RunRecord:
        """Ask Flower for the run's state (once it is final, it is kept)."""
        if record.status in _STATES.values():
            return record
        status = _STATES.get(run_status(self.layout, int(record.run_id)), "running")
        if status == record.status:
            return record
        fresh = replace(record, status=status)
        with self._lock:
            runs = self._load()
            if runs[record.run_id].status != record.status:
                return runs[record.run_id]  # another caller saw the change first
            runs[record.run_id] = fresh
            self._save(runs)
            if self.audit is not None and status != "running":
                output = self.folder(record) / "output"
                audit_received(
                    self.audit, output, run_id=record.run_id, who=COORDINATOR
                )
                self.audit.append(
                    who=COORDINATOR,
                    role="coordinator",
                    method="RunEnded",
                    args=digest(record.run_key.encode()),
                    outcome="ok",
                    detail=f"run {record.run_id} run-key {record.run_key} {status}"
                    + self._who_took_part(record),
                )
        return fresh

    def _who_took_part(self, record: RunRecord) -> str:
        """``; sites A, B; excluded C (why)`` from the run's summary, if any."""
        try:
            summary = json.loads(self.summary(record) or "{}")
        except json.JSONDecodeError:
            return ""
        sites = ", ".join(sorted(summary.get("sites", {})))
        excluded = "; ".join(
            f"{name} ({why})"
            for name, why in sorted(summary.get("excluded_sites", {}).items())
        )
        return (f"; sites {sites}" if sites else "") + (
            f"; excluded {excluded}" if excluded else ""
        )

    def stop(self, record: RunRecord) -> None:
        flwr_json(self.layout, "stop", record.run_id)

    def events(self, record: RunRecord) -> list[dict[str, Any]]:
        return read_events(self.folder(record) / "output" / PROGRESS_FILE)

    def summary(self, record: RunRecord) -> str:
        path = self.folder(record) / "output" / SUMMARY_FILE
        return path.read_text() if path.exists() else ""
