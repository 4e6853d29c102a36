"""``fedvault client access-log``: show and verify the site's access log (every
message the site received and what it answered, :mod:`fedvault.client.access_log`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedvault.client.access_log import access_log
from fedvault.client.site_config import load_site_config
from fedvault.common.cli import (
    FormatOption,
    OutputFormat,
    command_group,
    errors_as_exit,
    output_console,
    say,
)

access_log_app = command_group(
    "access-log", "Show or verify the log of every message this site answered."
)

ConfigOption = Annotated[Path, typer.Option(help="The site's TOML settings.")]
_COLUMNS = ("seq", "time", "run-key", "message", "round", "reply", "detail", "arrays")


@access_log_app.command("verify")
@errors_as_exit(os_errors=True)
def verify(config: ConfigOption = Path("site.toml")) -> None:
    """Recompute the access log's hash chain; fail (exit 2) naming the first line
    that was edited, deleted, inserted or moved."""
    log = access_log(load_site_config(config).state_dir)
    head = log.verify()
    say(
        output_console(),
        f"access log {log.path}: {head.seq + 1} entries, chain intact, head "
        f"{head.hash}",
    )


@access_log_app.command("show")
@errors_as_exit(os_errors=True)
def show(
    config: ConfigOption = Path("site.toml"),
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Every message the site answered: when, which run (its key), the message and
    round, the reply (trained, evaluated, answered, declined and why, error) and
    the digest of the update that left (its arrays, or a SecAgg+ masked vector)
    and the ledger head the reply published (its record count and hash)."""
    entries = list(access_log(load_site_config(config).state_dir).entries())
    if output_format is OutputFormat.JSON:
        sys.stdout.write(json.dumps(entries, indent=2) + "\n")
        return
    table = Table(title="Access log")
    for column in _COLUMNS:
        table.add_column(column)
    table.add_column("ledger-head")
    for entry in entries:
        head = entry.get("ledger-head") or {}
        published = f"{head.get('count')} {str(head.get('hash'))[:12]}" if head else ""
        table.add_row(*(str(entry.get(k, "")) for k in _COLUMNS), published)
    output_console().print(table)
