"""``fedvault client``: the site operator's commands (key pair, SuperNode, ledger)."""

from __future__ import annotations

from fedvault.client.ledger_cli import app as ledger_app
from fedvault.client.site_cli import site_app

app = site_app
app.info.help = (
    "Run a site: create its key pair, connect it to the coordinator, and read its "
    "privacy ledger."
)
app.add_typer(ledger_app, name="ledger")
