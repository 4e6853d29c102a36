"""``fedvault client pending`` and ``fedvault client approve``: the runs this site
holds for its operator's approval (:mod:`fedvault.client.pending`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedvault.client.pending import APPROVED, decide, pending_runs
from fedvault.client.site_config import load_site_config
from fedvault.common.cli import (
    FormatOption,
    OutputFormat,
    errors_as_exit,
    output_console,
    say,
)

ConfigOption = Annotated[Path, typer.Option(help="The site's TOML settings.")]


@errors_as_exit(os_errors=True)
def pending(
    config: ConfigOption = Path("site.toml"),
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """The runs this site holds for its operator's approval ([approval] hold =
    true), with their full settings; `client plan RUN_ID` shows what one would
    cost, `client approve RUN_ID [--reject]` decides."""
    cfg = load_site_config(config)
    held = pending_runs(cfg.state_dir)
    if output_format is OutputFormat.JSON:
        doc = {"site": cfg.options.name, "pending": [h.to_dict() for h in held]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    console = output_console()
    if not held:
        say(console, f"site {cfg.options.name}: no run is waiting for approval")
    for run in held:
        say(
            console,
            f"run {run.run_id} (run key {run.run_key}), held since {run.received}, "
            f"settings sha256:{run.digest}",
        )
        for key, value in run.settings.items():
            say(console, f"  {key} = {json.dumps(value)}")


@errors_as_exit(os_errors=True)
def approve(
    run_id: Annotated[str, typer.Argument(help="The held run's id.")],
    config: ConfigOption = Path("site.toml"),
    reject: Annotated[
        bool, typer.Option("--reject", help="Refuse the run instead.")
    ] = False,
) -> None:
    """Approve (or --reject) a run this site holds: the decision, for the run's
    recorded settings, is appended to the site's hash-chained approval log
    (STATE/approvals.jsonl); the site answers the coordinator's next query."""
    cfg = load_site_config(config)
    entry = decide(cfg.state_dir, run_id, approve=not reject)
    verb = "approved" if entry["decision"] == APPROVED else "rejected"
    say(
        output_console(),
        f"site {cfg.options.name}: run {run_id} {verb} (settings "
        f"sha256:{entry['settings']}; approval log seq {entry['seq']})",
    )
