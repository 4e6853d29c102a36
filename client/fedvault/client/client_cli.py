"""``fedvault client``: a site's key pair, its connection to the coordinator, and
(``fedvault client ledger``, from :mod:`fedvault.client.ledger_cli`) its privacy
ledger."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedvault.client.access_log_cli import access_log_app
from fedvault.client.ledger_cli import ledger_app
from fedvault.client.pending_cli import approve, pending
from fedvault.client.plan_cli import plan
from fedvault.client.site_config import load_site_config
from fedvault.client.site_status import site_status
from fedvault.client.supernode import run_site, stop_site
from fedvault.common.certs import fingerprint, generate_site_keys, load_site_public_key
from fedvault.common.cli import (
    FormatOption,
    OutputFormat,
    command_group,
    output_console,
    say,
)
from fedvault.common.files import FolderInUseError, PidLock

console = Console(stderr=True)

client_app = command_group(
    "client",
    "Run a site: create its key pair, connect it to the coordinator, and read its "
    "privacy ledger.",
)
client_app.add_typer(ledger_app, name="ledger")
client_app.add_typer(access_log_app, name="access-log")
client_app.command("plan")(plan)
client_app.command("pending")(pending)
client_app.command("approve")(approve)


@client_app.command("keygen")
def keygen(
    directory: Annotated[
        Path, typer.Argument(help="Folder for site.key and site.pub.")
    ],
    name: Annotated[str, typer.Option(help="Comment stored in the public key.")] = "",
) -> None:
    """Create this site's authentication key pair (EC P-384, OpenSSH format).

    site.key never leaves the site; send only site.pub to the coordinator, who runs
    `fedvault server sites add NAME site.pub`.
    """
    private, public = generate_site_keys(directory, comment=name)
    sys.stdout.write(public.read_text())
    say(
        console,
        f"private key {private} (keep it here); public key {public} (send it to "
        f"the coordinator); fingerprint {fingerprint(load_site_public_key(public))} "
        "(as `ssh-keygen -lf` shows it: the coordinator's `fedvault server sites "
        "add` must print the same)",
    )


@client_app.command("start")
def start(
    config: Annotated[Path, typer.Option(help="The site's TOML settings.")] = Path(
        "site.toml"
    ),
) -> None:
    """Connect this site to the coordinator and train when asked (until stopped).

    TLS and site authentication are on unless the config says insecure = true.
    """
    cfg = load_site_config(config)
    if cfg.options.insecure:
        say(
            console,
            "WARNING: insecure = true: no TLS and no site authentication; test use "
            "on one machine only.",
            style="bold red",
        )
    run_site(cfg, echo=sys.stderr)


@client_app.command("stop")
def stop(
    config: Annotated[Path, typer.Option(help="The site's TOML settings.")] = Path(
        "site.toml"
    ),
) -> None:
    """Stop this site's `fedvault client start` (its SuperNode and ClientApps with
    it), and any of its processes that a killed one left behind."""
    cfg = load_site_config(config)
    stopped = stop_site(cfg)
    done = f"stopped {', '.join(stopped)}" if stopped else "nothing was running"
    say(console, f"site {cfg.options.name}: {done}")


@client_app.command("status")
def status(
    config: Annotated[Path, typer.Option(help="The site's TOML settings.")] = Path(
        "site.toml"
    ),
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Whether this site runs, its current run and round, its last contact with
    the coordinator and last answer, this run's declines and failures, and the
    epsilon spent (this run and lifetime, as its accountant last reported)."""
    cfg = load_site_config(config)
    doc = {"site": cfg.options.name, "state-dir": str(cfg.state_dir)}
    doc |= site_status(cfg.state_dir, running_pid=_running(cfg.lock))
    if output_format is OutputFormat.JSON:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    out = output_console()
    running = f"running (pid {doc['pid']})" if doc["running"] else "not running"
    say(out, f"site {doc['site']}: {running}; log {cfg.log}")
    if doc["last-contact"] is None:
        say(out, "no answer given to a coordinator yet")
        return
    say(out, f"run {doc['run']}, round {doc['round'] or '-'}")
    say(out, f"last contact {doc['last-contact']}: {doc['last-answer']}")
    if doc["epsilon"] is not None:
        say(
            out,
            f"epsilon {doc['epsilon']:.3g} this run, {doc['epsilon-lifetime']:.3g} "
            f"of {doc['epsilon-budget']:.3g} lifetime",
        )
    for kind in ("declines", "failures"):
        say(out, f"{kind} this run: {len(doc[kind])}")
        for line in doc[kind][-5:]:
            say(out, f"  {line}")


def _running(lock: Path) -> int | None:
    """The pid of the `client start` holding the site's lock, or None."""
    if not lock.exists():
        return None
    probe = PidLock(lock, what="the site", wait=0.0)
    try:
        probe.acquire()
    except FolderInUseError as exc:
        return exc.pid or -1
    probe.release()
    return None
