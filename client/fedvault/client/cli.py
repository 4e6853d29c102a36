"""``fedvault client``: the site operator's commands."""

from __future__ import annotations

import typer

from fedvault.client.ledger_cli import app as ledger_app

app = typer.Typer(
    help="Site commands: the privacy ledger of this site's datasets.",
    no_args_is_help=True,
)
app.add_typer(ledger_app, name="ledger")
