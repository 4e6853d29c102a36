"""The coordinator service: fedvault's own control plane in front of the SuperLink.

A gRPC server (``Coordinator`` in ``protos/fedvault/proto/coordinator.proto``) over
mutual TLS with the consortium CA: the server shows the coordinator's certificate,
every caller must show a user certificate from the same CA. Each call is, in order:
authenticated (:mod:`fedvault.server.users`, read afresh), authorized
(:mod:`fedvault.server.rbac`, deny by default), carried out, and appended to the
audit log (:mod:`fedvault.server.audit_log`) with its outcome before the answer
leaves. Refusals and bad input answer one line (``PERMISSION_DENIED``,
``UNAUTHENTICATED``, ``INVALID_ARGUMENT``) and change nothing.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from fedvault.common.errors import ConfigError, FederationError, IntegrityError
from fedvault.common.user_certs import UserIdentity, read_user_cert
from fedvault.proto import coordinator_pb2 as pb
from fedvault.proto import coordinator_pb2_grpc as pb_grpc
from fedvault.server import control
from fedvault.server.audit_log import AuditLog, Outcome, digest
from fedvault.server.deploy import CoordinatorLayout
from fedvault.server.rbac import AccessDeniedError, Scope, authorize, check_owner
from fedvault.server.registry import SiteRegistry
from fedvault.server.run_book import RunBook, RunRecord
from fedvault.server.rundir import PRIVACY_FILE
from fedvault.server.study_policy import check_study, load_limits, parse_study
from fedvault.server.users import UnknownUserError, UserEntry, UserRegistry

T = TypeVar("T")
logger = logging.getLogger(__name__)
WATCH_POLL = 2.0


@dataclass(frozen=True)
class Governance:
    """The coordinator's governance folder and what the service works on."""

    root: Path
    layout: CoordinatorLayout
    ca_pem: bytes
    policy: Path
    live: bool = True  # the SuperLink runs: site changes reach Flower at once

    @property
    def users(self) -> Path:
        return self.root / "users.json"

    @property
    def audit(self) -> Path:
        return self.root / "audit.jsonl"


def _run_info(book: RunBook, record: RunRecord) -> pb.RunInfo:
    rounds_done = sum(1 for e in book.events(record) if e.get("event") == "round")
    return pb.RunInfo(
        run_id=record.run_id,
        owner=record.owner,
        status=record.status,
        rounds=record.rounds,
        rounds_done=rounds_done,
        submitted=record.submitted,
        summary_json=_summary_json(book, record),
        run_key=record.run_key,
    )


def _summary_json(book: RunBook, record: RunRecord) -> str:
    """The run's ``summary.json`` with its privacy report (``privacy.json``) under
    ``privacy_report`` once the run wrote one: what GetRun and ListRuns show,
    and so the privacy report of every run an auditor reads."""
    text = book.summary(record)
    report = book.folder(record) / "output" / PRIVACY_FILE
    if not text or not report.is_file():
        return text
    try:
        summary = json.loads(text)
        summary["privacy_report"] = json.loads(report.read_text())
    except (OSError, ValueError, TypeError):
        return text  # a run still writing it: the summary alone
    return json.dumps(summary)


class CoordinatorService(pb_grpc.CoordinatorServicer):
    """Every method of the ``Coordinator`` service, each behind :meth:`_serve`."""

    def __init__(self, gov: Governance) -> None:
        self.gov = gov
        self.audit = AuditLog(gov.audit)
        self.runs = RunBook(gov.root, gov.layout, self.audit)

    def _certificate(self, context: grpc.ServicerContext) -> UserIdentity:
        found: object = context.auth_context().get("x509_pem_cert")
        if not isinstance(found, list) or not found:
            raise UnknownUserError("no client certificate")
        try:
            return read_user_cert(found[0], self.gov.ca_pem)
        except IntegrityError as exc:
            raise UnknownUserError(str(exc)) from None

    def _serve(
        self,
        method: str,
        request: Message,
        context: grpc.ServicerContext,
        action: Callable[[UserEntry, Scope], tuple[T, str]],
    ) -> T:
        """Authenticate, authorize, act, audit; map refusals to one-line errors."""
        args = digest(request.SerializeToString(deterministic=True))
        who, role = "?", "?"
        try:
            identity = self._certificate(context)
            who, role = identity.name, identity.role
            entry = UserRegistry(self.gov.users).authenticate(identity)
            result, detail = action(entry, authorize(entry.role, method))
        except (AccessDeniedError, ConfigError, IntegrityError, FederationError) as exc:
            code, outcome = _refusal(exc)
            self.audit.append(
                who=who,
                role=role,
                method=method,
                args=args,
                outcome=outcome,
                detail=str(exc),
            )
            context.abort(code, str(exc))
        except Exception as exc:  # a bug or the disk: audited, then one line
            logger.exception("%s failed", method)
            self.audit.append(
                who=who,
                role=role,
                method=method,
                args=args,
                outcome="error",
                detail=f"internal error ({type(exc).__name__})",
            )
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the log")
        self.audit.append(
            who=who, role=role, method=method, args=args, outcome="ok", detail=detail
        )
        return result

    # runs ---------------------------------------------------------------------
    def SubmitRun(  # noqa: N802 - gRPC's method names
        self, request: pb.SubmitRunRequest, context: grpc.ServicerContext
    ) -> pb.RunInfo:
        def act(user: UserEntry, scope: Scope) -> tuple[pb.RunInfo, str]:
            study = parse_study(request.study_toml, base=self.gov.root)
            check_study(load_limits(self.gov.policy), study)
            record = self.runs.submit(study, owner=user.name)
            return _run_info(self.runs, record), (
                f"run {record.run_id} run-key {record.run_key}"
            )

        return self._serve("SubmitRun", request, context, act)

    def _record(self, run_id: str, user: UserEntry, scope: Scope) -> RunRecord:
        if not run_id:
            raise ConfigError("run-id: must not be empty")
        try:
            record = self.runs.get(run_id)
        except ConfigError:
            if scope == "own":  # never tell a researcher which runs exist
                raise AccessDeniedError(f"run {run_id}: not yours to see") from None
            raise
        check_owner(scope, caller=user.name, owner=record.owner, what=f"run {run_id}")
        return self.runs.refresh(record)

    def ListRuns(  # noqa: N802
        self, request: pb.ListRunsRequest, context: grpc.ServicerContext
    ) -> pb.ListRunsReply:
        def act(user: UserEntry, scope: Scope) -> tuple[pb.ListRunsReply, str]:
            records = [
                self.runs.refresh(r)
                for r in self.runs.all()
                if scope == "all" or r.owner == user.name
            ]
            runs = [_run_info(self.runs, r) for r in records]
            return pb.ListRunsReply(runs=runs), f"{len(runs)} runs"

        return self._serve("ListRuns", request, context, act)

    def GetRun(  # noqa: N802
        self, request: pb.RunRef, context: grpc.ServicerContext
    ) -> pb.RunInfo:
        def act(user: UserEntry, scope: Scope) -> tuple[pb.RunInfo, str]:
            record = self._record(request.run_id, user, scope)
            return _run_info(self.runs, record), f"run {record.run_id}"

        return self._serve("GetRun", request, context, act)

    def StopRun(  # noqa: N802
        self, request: pb.RunRef, context: grpc.ServicerContext
    ) -> pb.RunInfo:
        def act(user: UserEntry, scope: Scope) -> tuple[pb.RunInfo, str]:
            record = self._record(request.run_id, user, scope)
            self.runs.stop(record)
            return _run_info(self.runs, record), f"run {record.run_id} stopped"

        return self._serve("StopRun", request, context, act)

    def WatchRun(  # noqa: N802
        self, request: pb.RunRef, context: grpc.ServicerContext
    ) -> Iterator[pb.RunEvent]:
        def act(user: UserEntry, scope: Scope) -> tuple[RunRecord, str]:
            record = self._record(request.run_id, user, scope)
            return record, f"run {record.run_id}"

        record = self._serve("WatchRun", request, context, act)
        sent = 0
        while context.is_active():
            events = self.runs.events(record)
            for event in events[sent:]:
                yield pb.RunEvent(run_id=record.run_id, event_json=json.dumps(event))
            sent = len(events)
            record = self.runs.refresh(record)
            if record.status != "running" and len(self.runs.events(record)) == sent:
                return
            time.sleep(WATCH_POLL)

    # sites --------------------------------------------------------------------
    def ListSites(  # noqa: N802
        self, request: pb.ListSitesRequest, context: grpc.ServicerContext
    ) -> pb.ListSitesReply:
        def act(user: UserEntry, scope: Scope) -> tuple[pb.ListSitesReply, str]:
            sites = SiteRegistry(self.gov.layout.registry).sites.values()
            return pb.ListSitesReply(sites=[_site_info(s) for s in sites]), ""

        return self._serve("ListSites", request, context, act)

    def AddSite(  # noqa: N802
        self, request: pb.AddSiteRequest, context: grpc.ServicerContext
    ) -> pb.SiteInfo:
        def act(user: UserEntry, scope: Scope) -> tuple[pb.SiteInfo, str]:
            layout = self.gov.layout
            registry = SiteRegistry(layout.registry)
            with tempfile.TemporaryDirectory(prefix="fedvault-site-") as tmp:
                key = Path(tmp) / "site.pub"
                key.write_text(request.public_key.strip() + "\n")
                entry = registry.add(request.name, key)
            if self.gov.live:
                node = control.register_key(layout, entry.name, entry.public_key)
                registry.set_node(entry.name, node)
            registry.save()
            site = registry.get(entry.name)
            return _site_info(site), f"site {site.name} {site.fingerprint} enrolled"

        return self._serve("AddSite", request, context, act)

    def RemoveSite(  # noqa: N802
        self, request: pb.RemoveSiteRequest, context: grpc.ServicerContext
    ) -> pb.Empty:
        def act(user: UserEntry, scope: Scope) -> tuple[pb.Empty, str]:
            layout = self.gov.layout
            registry = SiteRegistry(layout.registry)
            entry = registry.get(request.name)
            if self.gov.live and entry.node_id is not None:
                control.unregister_node(layout, entry.node_id)
            registry.remove(request.name)
            registry.save()
            return pb.Empty(), f"site {entry.name} {entry.fingerprint} removed"

        return self._serve("RemoveSite", request, context, act)

    # users and the audit log -------------------------------------------------
    def ListUsers(  # noqa: N802
        self, request: pb.ListUsersRequest, context: grpc.ServicerContext
    ) -> pb.ListUsersReply:
        def act(user: UserEntry, scope: Scope) -> tuple[pb.ListUsersReply, str]:
            users = UserRegistry(self.gov.users).users.values()
            return pb.ListUsersReply(users=[_user_info(u) for u in users]), ""

        return self._serve("ListUsers", request, context, act)

    def AddUser(  # noqa: N802
        self, request: pb.AddUserRequest, context: grpc.ServicerContext
    ) -> pb.UserInfo:
        def act(user: UserEntry, scope: Scope) -> tuple[pb.UserInfo, str]:
            identity = read_user_cert(request.certificate_pem.encode(), self.gov.ca_pem)
            registry = UserRegistry(self.gov.users)
            entry = registry.add(identity)
            registry.save()
            return _user_info(entry), f"user {entry.name} role {entry.role} enrolled"

        return self._serve("AddUser", request, context, act)

    def RevokeUser(  # noqa: N802
        self, request: pb.RevokeUserRequest, context: grpc.ServicerContext
    ) -> pb.UserInfo:
        def act(user: UserEntry, scope: Scope) -> tuple[pb.UserInfo, str]:
            registry = UserRegistry(self.gov.users)
            entry = registry.revoke(request.name)
            registry.save()
            return _user_info(entry), f"user {entry.name} revoked"

        return self._serve("RevokeUser", request, context, act)

    def ReadAudit(  # noqa: N802
        self, request: pb.ReadAuditRequest, context: grpc.ServicerContext
    ) -> pb.ReadAuditReply:
        def act(user: UserEntry, scope: Scope) -> tuple[pb.ReadAuditReply, str]:
            lines = self.audit.lines(request.start, request.limit)
            return pb.ReadAuditReply(lines=lines), f"{len(lines)} entries"

        return self._serve("ReadAudit", request, context, act)


def _refusal(exc: Exception) -> tuple[grpc.StatusCode, Outcome]:
    """The status code and audit outcome of a refused call."""
    if isinstance(exc, UnknownUserError):
        return grpc.StatusCode.UNAUTHENTICATED, "denied"
    if isinstance(exc, AccessDeniedError):
        return grpc.StatusCode.PERMISSION_DENIED, "denied"
    if isinstance(exc, FederationError):
        return grpc.StatusCode.UNAVAILABLE, "error"
    return grpc.StatusCode.INVALID_ARGUMENT, "error"


def _site_info(site: Any) -> pb.SiteInfo:
    return pb.SiteInfo(
        name=site.name, fingerprint=site.fingerprint, node_id=site.node_id or 0
    )


def _user_info(user: UserEntry) -> pb.UserInfo:
    return pb.UserInfo(
        name=user.name, role=user.role, serial=user.serial, revoked=user.revoked
    )


def start_service(
    gov: Governance, *, address: str, server_cert: bytes, server_key: bytes
) -> tuple[grpc.Server, int]:
    """Start the service on ``address`` (port 0: any free one) with mutual TLS;
    returns the server and its port.

    Raises:
        ConfigError: the address cannot be bound.
    """
    server = grpc.server(
        _executor(), options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)]
    )
    pb_grpc.add_CoordinatorServicer_to_server(  # type: ignore[no-untyped-call]
        CoordinatorService(gov), server
    )
    credentials = grpc.ssl_server_credentials(
        [(server_key, server_cert)],
        root_certificates=gov.ca_pem,
        require_client_auth=True,
    )
    try:
        port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ConfigError(f"listen: cannot bind {address}")
    server.start()
    return server, port


def _executor() -> Any:
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="fedvault-gov")
