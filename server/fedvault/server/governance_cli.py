"""``fedvault server serve``, ``server audit`` and ``server users``: the coordinator
service (issue 17) and what its operator does on the coordinator's own host."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedvault.common.certs import SERVER_CERT, SERVER_KEY
from fedvault.common.cli import (
    FormatOption,
    OutputFormat,
    command_group,
    output_console,
    say,
)
from fedvault.common.errors import FederationError
from fedvault.common.files import PidLock, atomic_write, private
from fedvault.common.user_certs import read_user_cert
from fedvault.server.audit_log import AuditLog, digest, verify
from fedvault.server.control import sync_registry
from fedvault.server.control_service import Governance, start_service
from fedvault.server.deploy import CoordinatorConfig, CoordinatorLayout
from fedvault.server.deploy import load_coordinator_config as _load
from fedvault.server.metrics import (
    MetricsOption,
    MetricsServer,
    book_runs,
    check_metrics_address,
)
from fedvault.server.registry import SiteRegistry
from fedvault.server.remote_cli import remote_app
from fedvault.server.run_book import RunBook, RunRecord
from fedvault.server.study_policy import load_limits
from fedvault.server.superlink import superlink
from fedvault.server.users import UserRegistry

logger = logging.getLogger(__name__)
console = output_console()

ConfigOption = Annotated[Path, typer.Option("--config", help="coordinator.toml")]
OPERATOR = "operator@localhost"
MONITOR_SECONDS = 10.0

audit_app = command_group("audit", "Read and verify the coordinator's audit log.")
users_app = command_group("users", "Enroll and revoke users (on the coordinator).")


def register(server_app: typer.Typer) -> None:
    """Add ``serve``, ``audit``, ``users`` and ``remote`` to ``fedvault server``."""
    server_app.command("serve")(serve)
    server_app.add_typer(audit_app, name="audit")
    server_app.add_typer(users_app, name="users")
    server_app.add_typer(remote_app, name="remote")


def governance_dir(cfg: CoordinatorConfig) -> Path:
    """Users, audit log, runs and the service's address, under the run folder."""
    return cfg.run_dir / "governance"


def serve(
    config: ConfigOption = Path("coordinator.toml"),
    policy: Annotated[
        Path, typer.Option("--policy", help="The consortium's limits on studies.")
    ] = Path("policy.toml"),
    listen: Annotated[
        str, typer.Option("--listen", help="Address of the service (mutual TLS).")
    ] = "0.0.0.0:9443",
    metrics_address: MetricsOption = "",
) -> None:
    """Keep the SuperLink and the coordinator service up until stopped (Ctrl-C,
    SIGTERM): users submit studies, admins enroll sites and users, auditors read
    the audit log, each with a certificate from `fedvault certs user`."""
    if metrics_address:
        check_metrics_address(metrics_address)
    cfg = _load(config)
    cfg.check_certs()
    load_limits(policy)  # refuse a bad policy before anything starts
    layout = CoordinatorLayout(cfg.run_dir)
    gov_root = governance_dir(cfg)
    lock = PidLock(layout.lock, what=f"the run folder {layout.root}")
    lock.acquire()
    try:
        with private(layout.root), superlink(cfg, insecure=False):
            added = sync_registry(layout, SiteRegistry(layout.registry))
            logger.info("registered %d site(s) with the SuperLink", len(added))
            gov = Governance(
                gov_root, layout, cfg.ca_cert.read_bytes(), policy.resolve()
            )
            metrics = None
            if metrics_address:
                runs = book_runs(RunBook(gov_root, layout))
                metrics = MetricsServer(metrics_address, runs)
                say(console, f"Prometheus metrics on {metrics.url}")
            try:
                _serve_until_stopped(gov, cfg, listen)
            finally:
                if metrics is not None:
                    metrics.close()
    finally:
        lock.release()


def _serve_until_stopped(gov: Governance, cfg: CoordinatorConfig, listen: str) -> None:
    server, port = start_service(
        gov,
        address=listen,
        server_cert=(cfg.certs_dir / SERVER_CERT).read_bytes(),
        server_key=(cfg.certs_dir / SERVER_KEY).read_bytes(),
    )
    host = listen.rsplit(":", 1)[0]
    address = f"{host}:{port}"
    audit = AuditLog(gov.audit)
    audit.append(
        who=OPERATOR,
        role="operator",
        method="ServiceStart",
        args=digest(address.encode()),
        outcome="ok",
        detail=f"listening on {address}",
    )
    doc = {"address": address, "port": port}
    atomic_write(gov.root / "service.json", (json.dumps(doc) + "\n").encode())
    say(console, f"coordinator service on {address} (mutual TLS); Ctrl-C stops it")
    book = RunBook(gov.root, gov.layout, audit)
    try:
        while True:  # notice runs that end while nobody asks about them
            time.sleep(MONITOR_SECONDS)
            for record in book.all():
                if record.status == "running":
                    _refresh_quietly(book, record)
    finally:
        server.stop(grace=2.0).wait()
        (gov.root / "service.json").unlink(missing_ok=True)
        audit.append(
            who=OPERATOR,
            role="operator",
            method="ServiceStop",
            args=digest(b""),
            outcome="ok",
        )


def _refresh_quietly(book: RunBook, record: RunRecord) -> None:
    try:
        book.refresh(record)
    except FederationError as exc:
        logger.warning("run %s: %s", record.run_id, exc)


@audit_app.command("verify")
def audit_verify(config: ConfigOption = Path("coordinator.toml")) -> None:
    """Recompute the audit log's hash chain; fail naming the first entry that was
    edited, deleted, inserted or moved."""
    path = governance_dir(_load(config)) / "audit.jsonl"
    head = verify(path)
    say(
        console,
        f"audit log {path}: {head.seq + 1} entries, chain intact, head {head.hash}",
    )


@audit_app.command("show")
def audit_show(
    config: ConfigOption = Path("coordinator.toml"),
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """The audit log's entries (who, role, method, outcome, time)."""
    entries = list(AuditLog(governance_dir(_load(config)) / "audit.jsonl").entries())
    if output_format is OutputFormat.JSON:
        sys.stdout.write(json.dumps(entries, indent=2) + "\n")
        return
    table = Table(title="Audit log")
    for col in ("seq", "time", "who", "role", "method", "outcome", "detail"):
        table.add_column(col)
    for e in entries:
        table.add_row(
            *(
                str(e.get(k, ""))
                for k in ("seq", "time", "who", "role", "method", "outcome", "detail")
            )
        )
    console.print(table)


@users_app.command("add")
def users_add(
    certificate: Annotated[Path, typer.Argument(help="NAME.crt from `certs user`.")],
    config: ConfigOption = Path("coordinator.toml"),
) -> None:
    """Enroll a user by the certificate `fedvault certs user` issued (the first
    admin is enrolled this way; later users also over the service's AddUser)."""
    cfg = _load(config)
    gov_root = governance_dir(cfg)
    identity = read_user_cert(certificate.read_bytes(), cfg.ca_cert.read_bytes())
    registry = UserRegistry(gov_root / "users.json")
    entry = registry.add(identity)
    registry.save()
    AuditLog(gov_root / "audit.jsonl").append(
        who=OPERATOR,
        role="operator",
        method="AddUser",
        args=digest(certificate.read_bytes()),
        outcome="ok",
        detail=f"user {entry.name} role {entry.role} enrolled",
    )
    say(console, f"user {entry.name} enrolled as {entry.role}")


@users_app.command("revoke")
def users_revoke(
    name: Annotated[str, typer.Argument(help="User name.")],
    config: ConfigOption = Path("coordinator.toml"),
) -> None:
    """Revoke a user: the service refuses its very next call."""
    gov_root = governance_dir(_load(config))
    registry = UserRegistry(gov_root / "users.json")
    entry = registry.revoke(name)
    registry.save()
    AuditLog(gov_root / "audit.jsonl").append(
        who=OPERATOR,
        role="operator",
        method="RevokeUser",
        args=digest(name.encode()),
        outcome="ok",
        detail=f"user {name} revoked",
    )
    say(console, f"user {entry.name} revoked")


@users_app.command("list")
def users_list(
    config: ConfigOption = Path("coordinator.toml"),
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """The enrolled users, their roles and whether they are revoked."""
    users = UserRegistry(governance_dir(_load(config)) / "users.json").users.values()
    rows: list[dict[str, str | bool]] = [
        {"name": u.name, "role": u.role, "serial": u.serial, "revoked": u.revoked}
        for u in users
    ]
    if output_format is OutputFormat.JSON:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="Users")
    for col in ("name", "role", "revoked", "certificate serial"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[k]) for k in ("name", "role", "revoked", "serial")))
    console.print(table)
