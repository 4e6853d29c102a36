"""``fedvault server``: run and stop the coordinator, show its state, manage site
keys."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fedvault.common.cli import (
    FormatOption,
    OutputFormat,
    command_group,
    output_console,
    progress_bar,
    say,
)
from fedvault.common.errors import ConfigError, FederationError
from fedvault.server import control
from fedvault.server import coordinator as coord
from fedvault.server.deploy import (
    CoordinatorConfig,
    CoordinatorLayout,
    load_coordinator_config,
)
from fedvault.server.governance_cli import register as register_governance
from fedvault.server.health import HealthServer, health_doc
from fedvault.server.lineage import load_parent
from fedvault.server.metrics import (
    MetricsOption,
    MetricsServer,
    check_metrics_address,
    folder_runs,
)
from fedvault.server.registry import SiteRegistry
from fedvault.server.rundir import PROGRESS_FILE
from fedvault.server.runstate import inspect_run, read_events, round_states
from fedvault.server.status_cli import print_sites, status, status_doc
from fedvault.server.superlink import read_live

logger = logging.getLogger(__name__)
console = output_console()
err_console = Console(stderr=True)

ConfigOption = Annotated[Path, typer.Option("--config", help="coordinator.toml")]
InsecureOption = Annotated[
    bool,
    typer.Option(
        "--insecure", help="No TLS, no site authentication (local tests only)."
    ),
]

server_app = command_group(
    "server", "Run the coordinator of a real (networked) federation."
)
sites_app = command_group("sites", "Register and remove sites by their public keys.")
server_app.add_typer(sites_app, name="sites")


def _events(layout: CoordinatorLayout) -> list[dict[str, Any]]:
    return read_events(layout.output / PROGRESS_FILE)


@server_app.command("start")
def start(
    config: ConfigOption = Path("coordinator.toml"),
    insecure: InsecureOption = False,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart", help="Move a previous run's output aside and start over."
        ),
    ] = False,
    resume_stopped: Annotated[
        bool,
        typer.Option(
            "--resume-stopped",
            help="If the run folder holds a stopped run, resume it instead "
            "(for a service manager: one command that starts and continues).",
        ),
    ] = False,
    init_model: Annotated[
        Path | None,
        typer.Option(
            help="Start from this model file or run folder (same model and "
            "columns); overrides [coordinator] init-model."
        ),
    ] = None,
    metrics_address: MetricsOption = "",
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Start the coordinator (Flower SuperLink with TLS and site authentication),
    run the federated training to its end, and write the results to the run folder.

    Only the Fleet address is for partners; the Control API stays on loopback."""
    cfg = load_coordinator_config(config)
    if init_model is not None:
        options = dataclasses.replace(cfg.options, init_model=str(init_model.resolve()))
        cfg = dataclasses.replace(cfg, options=options)
    if cfg.options.init_model:  # readable, same architecture: before anything runs
        load_parent(cfg.base / cfg.options.init_model, cfg.training)
    _drive(
        cfg,
        insecure=insecure,
        output_format=output_format,
        metrics_address=metrics_address,
        run=lambda poll: coord.start(
            cfg,
            insecure=insecure,
            restart=restart,
            resume_stopped=resume_stopped,
            on_poll=poll,
        ),
    )


@server_app.command("resume")
def resume(
    config: ConfigOption = Path("coordinator.toml"),
    insecure: InsecureOption = False,
    metrics_address: MetricsOption = "",
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Continue the unfinished run in the config's run folder after the coordinator
    stopped or crashed: from its last completed round, with the same settings and
    run key (sites' ledgers continue the same run, nothing is counted twice)."""
    cfg = load_coordinator_config(config)
    _drive(
        cfg,
        insecure=insecure,
        output_format=output_format,
        metrics_address=metrics_address,
        run=lambda poll: coord.resume(cfg, insecure=insecure, on_poll=poll),
    )


def _drive(
    cfg: CoordinatorConfig,
    *,
    insecure: bool,
    output_format: OutputFormat,
    metrics_address: str,
    run: Callable[[Callable[[], None]], dict[str, Any]],
) -> None:
    """Run the coordinator with a progress display (and, with a metrics address,
    its Prometheus metrics); report the outcome."""
    if metrics_address:
        check_metrics_address(metrics_address)  # before anything starts
    if insecure:
        say(
            err_console,
            "WARNING: --insecure: no TLS and no site authentication. Anyone who "
            "reaches the Fleet port can join and read the model. Local tests only.",
            style="bold red",
        )
    layout = CoordinatorLayout(cfg.run_dir)
    progress = progress_bar(console, output_format)
    task = progress.add_task(
        "rounds", total=cfg.training.rounds, status="waiting for sites"
    )

    told: set[tuple[str, int]] = set()
    health: list[HealthServer | MetricsServer] = []
    started: list[bool] = []

    def poll() -> None:
        if not started:  # the folder is ours now
            started.append(True)
            health.extend(_endpoints(cfg, layout, metrics_address))
        for event in _events(layout):
            if event["event"] == "ready":
                progress.update(task, status=f"{len(event['sites'])} sites ready")
            elif event["event"] == "round":
                progress.update(
                    task,
                    completed=event["round"],
                    status=f"{event['sites_trained']} sites trained",
                )
            _tell_states(event, told)

    try:
        with progress:
            summary = run(poll)
    except coord.StopRequested:
        folder = inspect_run(layout, rounds=cfg.training.rounds)
        say(err_console, f"coordinator stopped: {folder.message(cfg.source)}")
        return
    finally:
        for server in health:
            server.close()
    if output_format is OutputFormat.JSON:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        say(
            console,
            f"Run {summary['status']}: {summary.get('rounds_completed')} rounds. "
            f"Results in {layout.output}.",
        )
    if summary["status"] != "completed":
        say(err_console, f"run stopped early: {summary.get('stop_reason')}")
        raise typer.Exit(1)


def _endpoints(
    cfg: CoordinatorConfig, layout: CoordinatorLayout, metrics_address: str
) -> list[HealthServer | MetricsServer]:
    """The health endpoint and the metrics endpoint the run asks for."""
    found: list[HealthServer | MetricsServer] = []
    rounds = cfg.training.rounds
    if cfg.options.health_address:
        state = functools.partial(health_doc, layout, rounds=rounds)
        found.append(HealthServer(cfg.options.health_address, state))
    if metrics_address:
        found.append(MetricsServer(metrics_address, folder_runs(layout)))
    return found


def _tell_states(event: dict[str, Any], told: set[tuple[str, int]]) -> None:
    """One line per round (on stderr): what each known site did in it."""
    states = round_states(event)
    key = (str(event["event"]), int(event.get("round", 0)))
    if states is None or key in told:
        return
    told.add(key)
    sites = "; ".join(f"{name}: {state}" for name, state in states.items())
    say(err_console, f"round {key[1]}: {sites}")


server_app.command("status")(status)


@server_app.command("stop")
def stop(config: ConfigOption = Path("coordinator.toml")) -> None:
    """Stop the coordinator cleanly: its run stops after its last completed round,
    whose checkpoint is kept (`fedvault server resume` continues it). Also stops
    Flower processes that a killed coordinator left behind."""
    cfg = load_coordinator_config(config)
    stopped = coord.stop(cfg)
    folder = inspect_run(CoordinatorLayout(cfg.run_dir), rounds=cfg.training.rounds)
    done = f"stopped {', '.join(stopped)}" if stopped else "nothing was running"
    say(console, f"{done}; {folder.message(cfg.source)}")


@sites_app.command("add")
def sites_add(
    name: Annotated[str, typer.Argument(help="Site name (letters, digits, . _ -).")],
    public_key: Annotated[Path, typer.Argument(help="The site's site.pub.")],
    config: ConfigOption = Path("coordinator.toml"),
) -> None:
    """Allow a site to join, by its public key (no certificate is re-issued)."""
    cfg = load_coordinator_config(config)
    layout = CoordinatorLayout(cfg.run_dir)
    registry = SiteRegistry(layout.registry)
    entry = registry.add(name, public_key)
    live = read_live(layout)
    if live is not None and not live.get("insecure"):
        registry.set_node(name, control.register_key(layout, name, entry.public_key))
        registry.save()
        later = ""
        if any(e["event"] == "ready" for e in _events(layout)):
            later = (
                f"; the run in progress keeps the sites it started with: {name} "
                "takes part in the coordinator's next run (it is told so when it "
                "connects)"
            )
        elif live.get("run-id") is not None:
            later = "; the run is still waiting for its sites: it can join it"
        say(
            console,
            f"site {name} registered ({entry.fingerprint}); it can connect now{later}",
        )
    else:
        registry.save()
        say(
            console,
            f"site {name} added ({entry.fingerprint}); it is registered with "
            "Flower when the coordinator starts",
        )


@sites_app.command("remove")
def sites_remove(
    name: Annotated[str, typer.Argument(help="Site name.")],
    config: ConfigOption = Path("coordinator.toml"),
) -> None:
    """Revoke a site's key for good: it can no longer connect, and its key is never
    admitted again (the site makes a new one to come back). Refused while
    coordinator.toml lists the site under [sites]."""
    cfg = load_coordinator_config(config)
    if name in cfg.sites:
        raise ConfigError(
            f"site {name!r} is listed under [sites] in {config}: delete that line "
            "first (a run folder made afresh from the file would admit it again), "
            "then remove the site"
        )
    layout = CoordinatorLayout(cfg.run_dir)
    registry = SiteRegistry(layout.registry)
    entry = registry.get(name)
    live = read_live(layout)
    if live is not None and entry.node_id is not None and not live.get("insecure"):
        try:
            control.unregister_node(layout, entry.node_id)
        except FederationError as exc:
            logger.warning("Flower did not unregister node %s: %s", entry.node_id, exc)
    registry.remove(name)
    registry.save()
    when = "now" if live is not None else "when the coordinator starts"
    say(console, f"site {name} removed; its key is revoked {when}")


@sites_app.command("list")
def sites_list(
    config: ConfigOption = Path("coordinator.toml"),
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """The registered sites and, while the coordinator runs, their state."""
    sites = status_doc(config)["sites"]
    if output_format is OutputFormat.JSON:
        sys.stdout.write(json.dumps(sites, indent=2) + "\n")
    else:
        print_sites(sites)


# The coordinator service of issue 17: `serve`, `audit`, `users`, `runs`.
register_governance(server_app)
