"""``fedvault server remote``: a user's commands to the coordinator service, with
the user's certificate (`fedvault certs user`) over mutual TLS."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from fedvault.common.cli import (
    FormatOption,
    OutputFormat,
    command_group,
    output_console,
    say,
)
from fedvault.server.governance_client import (
    TIMEOUT,
    UserCredentials,
    call,
    connect,
    pb,
)

console = output_console()
remote_app = command_group(
    "remote", "Call the coordinator service as a user (admin, researcher, auditor)."
)


def _session(ctx: typer.Context) -> tuple[str, UserCredentials]:
    obj: tuple[str, UserCredentials] = ctx.obj
    return obj


@remote_app.callback()
def _connection(
    ctx: typer.Context,
    coordinator: Annotated[
        str,
        typer.Option(envvar="FEDVAULT_COORDINATOR", help="HOST:PORT of the service."),
    ],
    cert: Annotated[Path, typer.Option(envvar="FEDVAULT_USER_CERT", help="NAME.crt")],
    key: Annotated[Path, typer.Option(envvar="FEDVAULT_USER_KEY", help="NAME.key")],
    ca: Annotated[
        Path, typer.Option(envvar="FEDVAULT_CA", help="The consortium's ca.crt.")
    ],
) -> None:
    """Every command needs the service's address and the user's files (options or
    FEDVAULT_COORDINATOR, FEDVAULT_USER_CERT, FEDVAULT_USER_KEY, FEDVAULT_CA)."""
    ctx.obj = (coordinator, UserCredentials(cert, key, ca))


def _do(ctx: typer.Context, method: str, request: Message, fmt: OutputFormat) -> Any:
    """One unary call (with the client's deadline); prints JSON when asked."""
    address, user = _session(ctx)
    with connect(address, user) as stub:
        rpc = getattr(stub, method)
        reply = call(lambda: rpc(request, timeout=TIMEOUT))
    doc = MessageToDict(reply, preserving_proto_field_name=True)
    if fmt is OutputFormat.JSON:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    return doc


@remote_app.command("submit")
def submit(
    ctx: typer.Context,
    study: Annotated[Path, typer.Argument(help="The study's TOML (as server start).")],
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Submit a study; it is checked against the consortium's limits first."""
    request = pb.SubmitRunRequest(study_toml=study.read_text())
    doc = _do(ctx, "SubmitRun", request, output_format)
    if output_format is OutputFormat.TEXT:
        say(console, f"run {doc['run_id']} submitted (run key {doc['run_key']})")


@remote_app.command("runs")
def runs(ctx: typer.Context, output_format: FormatOption = OutputFormat.TEXT) -> None:
    """The runs the user may see (a researcher: its own)."""
    doc = _do(ctx, "ListRuns", pb.ListRunsRequest(), output_format)
    if output_format is OutputFormat.TEXT:
        for run in doc.get("runs", []):
            say(
                console,
                f"run {run['run_id']} {run['status']} owner {run['owner']} "
                f"rounds {run.get('rounds_done', 0)}/{run.get('rounds', 0)}",
            )


@remote_app.command("run")
def run(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """One run's state and, once it ended, its summary (results, epsilon per site,
    declines)."""
    doc = _do(ctx, "GetRun", pb.RunRef(run_id=run_id), output_format)
    if output_format is OutputFormat.TEXT:
        say(console, f"run {doc['run_id']} {doc['status']}")


@remote_app.command("stop")
def stop(ctx: typer.Context, run_id: Annotated[str, typer.Argument()]) -> None:
    """Stop a run (an admin: any; a researcher: its own)."""
    _do(ctx, "StopRun", pb.RunRef(run_id=run_id), OutputFormat.TEXT)
    say(console, f"run {run_id}: stop requested")


@remote_app.command("watch")
def watch(ctx: typer.Context, run_id: Annotated[str, typer.Argument()]) -> None:
    """Print a run's progress events (JSON lines) until it ends."""
    address, user = _session(ctx)
    with connect(address, user) as stub:

        def stream() -> None:
            for event in stub.WatchRun(pb.RunRef(run_id=run_id)):
                sys.stdout.write(event.event_json + "\n")
                sys.stdout.flush()

        call(stream)


@remote_app.command("add-site")
def add_site(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Site name.")],
    public_key: Annotated[Path, typer.Argument(help="The site's site.pub.")],
) -> None:
    """Enroll a site by its public key (admin); it can connect at once."""
    request = pb.AddSiteRequest(name=name, public_key=public_key.read_text())
    doc = _do(ctx, "AddSite", request, OutputFormat.TEXT)
    say(console, f"site {name} enrolled ({doc['fingerprint']})")


@remote_app.command("remove-site")
def remove_site(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Remove a site and revoke its key for good (admin)."""
    _do(ctx, "RemoveSite", pb.RemoveSiteRequest(name=name), OutputFormat.TEXT)
    say(console, f"site {name} removed")


@remote_app.command("add-user")
def add_user(
    ctx: typer.Context,
    certificate: Annotated[Path, typer.Argument(help="NAME.crt (never the key).")],
) -> None:
    """Enroll a user by its certificate (admin)."""
    request = pb.AddUserRequest(certificate_pem=certificate.read_text())
    doc = _do(ctx, "AddUser", request, OutputFormat.TEXT)
    say(console, f"user {doc['name']} enrolled as {doc['role']}")


@remote_app.command("revoke-user")
def revoke_user(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Revoke a user (admin): its next call is refused."""
    _do(ctx, "RevokeUser", pb.RevokeUserRequest(name=name), OutputFormat.TEXT)
    say(console, f"user {name} revoked")


@remote_app.command("sites")
def sites(ctx: typer.Context, output_format: FormatOption = OutputFormat.JSON) -> None:
    """The enrolled sites."""
    _do(ctx, "ListSites", pb.ListSitesRequest(), output_format)


@remote_app.command("users")
def users(ctx: typer.Context, output_format: FormatOption = OutputFormat.JSON) -> None:
    """The enrolled users (admin, auditor)."""
    _do(ctx, "ListUsers", pb.ListUsersRequest(), output_format)


@remote_app.command("audit")
def audit(
    ctx: typer.Context,
    start: Annotated[int, typer.Option(help="First entry (0-based).")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many (0: all).")] = 0,
) -> None:
    """The audit log's entries, as stored (admin, auditor)."""
    request = pb.ReadAuditRequest(start=start, limit=limit)
    doc = _do(ctx, "ReadAudit", request, OutputFormat.TEXT)
    for line in doc.get("lines", []):
        sys.stdout.write(line + "\n")
