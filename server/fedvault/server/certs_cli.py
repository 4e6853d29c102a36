"""``fedvault certs``: the consortium CA and the coordinator's TLS certificate."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedvault.common import ca_rotation, certs, user_certs
from fedvault.common.cli import FormatOption, OutputFormat, command_group, say
from fedvault.common.errors import ConfigError

console = Console()
err_console = Console(stderr=True)

certs_app = command_group(
    "certs",
    "Consortium CA and coordinator certificate (TLS for every site connection).",
)


@certs_app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(help="Folder for ca.crt and ca.key.")],
    name: Annotated[
        str, typer.Option(help="CA common name.")
    ] = "fedvault consortium CA",
    days: Annotated[int, typer.Option(help="CA lifetime in days.")] = certs.CA_DAYS,
) -> None:
    """Create the consortium CA. Keep ca.key offline or on the coordinator only;
    give ca.crt to every site."""
    cert = certs.create_ca(directory, name=name, days=days)
    say(
        console,
        f"CA certificate {cert} (give it to every site); "
        f"private key {directory / certs.CA_KEY} (keep it secret).",
    )


@certs_app.command("server")
def server(
    directory: Annotated[Path, typer.Argument(help="Folder holding the CA.")],
    host: Annotated[
        str | None,
        typer.Option(help="DNS name sites dial to reach the coordinator."),
    ] = None,
    ip: Annotated[
        list[str] | None, typer.Option(help="IP address sites may dial (repeatable).")
    ] = None,
    days: Annotated[int, typer.Option(help="Lifetime in days.")] = certs.SERVER_DAYS,
    renew: Annotated[
        bool,
        typer.Option(
            "--renew",
            help="Re-issue the existing server.crt for --days more (same key, names).",
        ),
    ] = False,
) -> None:
    """Issue the coordinator's TLS certificate (SANs: --host, each --ip, localhost,
    127.0.0.1), or --renew the one in DIRECTORY."""
    if renew:
        if host is not None or ip:
            raise ConfigError("--renew keeps the certificate's names: drop --host/--ip")
        cert = certs.renew_server_cert(directory, days=days)
        until = certs.cert_status(cert).not_after.strftime("%Y-%m-%d %H:%M UTC")
        say(
            console,
            f"coordinator certificate {cert} renewed until {until}; a running "
            "coordinator uses it after `fedvault server stop` and `server resume`",
        )
        return
    if host is None:
        raise ConfigError("certs server: give --host (or --renew)")
    cert = certs.issue_server_cert(directory, host=host, ips=tuple(ip or ()), days=days)
    say(
        console,
        f"coordinator certificate {cert} for {host}"
        + (f" and {', '.join(ip)}" if ip else ""),
    )


rotate_app = command_group(
    "rotate-ca",
    "Rotate the consortium CA and the coordinator's certificate with an overlap "
    "window (begin, switch, finish; docs/operations.md).",
)
certs_app.add_typer(rotate_app, name="rotate-ca")
CaDir = Annotated[Path, typer.Argument(help="Folder holding the CA (certs).")]


@rotate_app.command("begin")
def rotate_begin(directory: CaDir) -> None:
    """Step 1: a new CA beside the old one; ca.crt becomes old + new, for every
    site and user to install (they then trust both)."""
    bundle = ca_rotation.begin(directory)
    say(
        console,
        f"new CA in {directory / ca_rotation.NEXT}; {bundle} now holds the old and "
        "the new CA: give it to every site and user, then run `fedvault certs "
        f"rotate-ca switch {directory}`",
    )


@rotate_app.command("switch")
def rotate_switch(directory: CaDir) -> None:
    """Step 2: the coordinator's certificate re-issued by the new CA, which signs
    from now on; restart the coordinator to show it."""
    cert = ca_rotation.switch(directory)
    say(
        console,
        f"coordinator certificate {cert} now from the new CA (old CA kept in "
        f"{directory / ca_rotation.PREVIOUS}); restart the coordinator (`server "
        "stop` + `server resume`, or the service); users get new certificates "
        "(`certs user`, then revoke + add); then `fedvault certs rotate-ca finish "
        f"{directory}`",
    )


@rotate_app.command("finish")
def rotate_finish(directory: CaDir) -> None:
    """Step 3: drop the old CA; ca.crt holds the new one alone."""
    bundle = ca_rotation.finish(directory)
    say(
        console,
        f"old CA dropped; {bundle} holds the new CA alone: give it to every site "
        "and user (and update [approval] coordinator-ca); anything trusting only "
        "the old CA now fails the handshake",
    )


@certs_app.command("user")
def user(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, . _ -).")],
    role: Annotated[str, typer.Option(help="admin, researcher or auditor.")],
    ca: Annotated[Path, typer.Option(help="Folder holding the CA.")] = Path("certs"),
    out: Annotated[Path, typer.Option(help="Folder for NAME.crt and NAME.key.")] = Path(
        "."
    ),
    days: Annotated[int, typer.Option(help="Lifetime in days.")] = user_certs.USER_DAYS,
) -> None:
    """Issue a user's client certificate for the coordinator service (the role is
    in the certificate; the coordinator enrolls and can revoke it)."""
    cert = user_certs.issue_user_cert(ca, out, name=name, role=role, days=days)
    say(
        console,
        f"user certificate {cert} ({role}); key {out / (name + '.key')} (give both "
        "to the user only); enroll it with `fedvault server users add`",
    )


@certs_app.command("check")
def check(
    directory: Annotated[Path, typer.Argument(help="Folder of *.crt files.")],
    warn_days: Annotated[
        float, typer.Option(help="Warn when fewer days remain.")
    ] = certs.WARN_DAYS,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Show each certificate's remaining lifetime. Exit 1 when one is expired or
    invalid, 3 when one expires within --warn-days."""
    statuses = certs.check_certificates(directory, warn_days=warn_days)
    if output_format is OutputFormat.JSON:
        rows = [
            {
                "path": str(s.path),
                "subject": s.subject,
                "not-after": s.not_after.isoformat(),
                "days-left": round(s.days_left, 2),
                "state": s.state,
                "detail": s.detail,
            }
            for s in statuses
        ]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        table = Table(title=f"Certificates in {directory}")
        for col in ("file", "subject", "expires (UTC)", "days left", "state"):
            table.add_column(col)
        for s in statuses:
            style = {"ok": "green", "expiring": "yellow"}.get(s.state, "bold red")
            table.add_row(
                s.path.name,
                s.subject,
                s.not_after.strftime("%Y-%m-%d"),
                f"{s.days_left:.0f}",
                f"[{style}]{s.state}[/] {escape(s.detail)}",
            )
        console.print(table)
    states = {s.state for s in statuses}
    if states & {"expired", "invalid"}:
        raise typer.Exit(1)
    if "expiring" in states:
        say(
            err_console,
            f"warning: a certificate expires within {warn_days:g} days; renew it",
            style="yellow",
        )
        raise typer.Exit(3)
