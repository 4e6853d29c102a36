"""The ``fedvault simulate`` command: options, live progress and the final tables."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console

from fedvault.common.cli import (
    EXIT_RUN_FAILED,
    FormatOption,
    OutputFormat,
    progress_bar,
    say,
)
from fedvault.common.config import read_toml
from fedvault.server import simulate as sim
from fedvault.server import simulate_tables
from fedvault.server.drift import flagged_lines
from fedvault.server.rundir import PROGRESS_FILE

console = Console()
_err = Console(stderr=True, soft_wrap=True)

_HELP = """Simulate a whole federation on this machine, on Flower's simulation runtime.

Each simulated hospital trains the shared model with DP-SGD (Opacus) on its own
rows; only summary counts, model weights and metrics leave a site. With no options
this runs 5 sites on the embedded breast-cancer data at epsilon <= 3, delta = 1e-5
per site.

Settings come from --config FILE (TOML, keys as the long options without dashes,
e.g. local-epochs = 2), then from the options given here, which win.
"""

# parameters of `simulate` that are not settings under their own name
_NOT_SETTINGS = frozenset({"config", "output_format", "secagg", "no_dp"})


def _given(params: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line, under their TOML keys.

    ``None`` means "not given", so a value from --config stays; paths travel as
    strings; the switches only ever turn something on (--secagg) or off (--no-dp).
    """
    values = {
        name.replace("_", "-"): str(value) if isinstance(value, Path) else value
        for name, value in params.items()
        if name not in _NOT_SETTINGS and value is not None
    }
    if params["secagg"]:
        values["secagg"] = True
    if params["no_dp"]:
        values["dp"] = False
    return values


def simulate(
    sites: Annotated[
        int | None, typer.Option(help="Number of simulated sites (default: 5).")
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(help="Federated rounds (default: 10).")
    ] = None,
    local_epochs: Annotated[
        int | None, typer.Option(help="Local epochs per round (default: 1).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Expected batch size (Poisson) (default: 32).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Local SGD learning rate (default: 0.5).")
    ] = None,
    momentum: Annotated[
        float | None,
        typer.Option(help="Local SGD momentum (default: 0; the cnn's: see docs)."),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="fedavg | fedprox | fedadam, or a Byzantine-robust aggregation: "
            "fedmedian | fedtrimmedavg | krum | multikrum | bulyan (default: fedavg)."
        ),
    ] = None,
    proximal_mu: Annotated[
        float | None,
        typer.Option(help="FedProx's proximal term mu (default: 0.01)."),
    ] = None,
    malicious_sites: Annotated[
        int | None,
        typer.Option(
            help="Sites krum, multikrum and bulyan must tolerate (default: 1)."
        ),
    ] = None,
    trim_fraction: Annotated[
        float | None,
        typer.Option(help="Share fedtrimmedavg trims at each end (default: 0.2)."),
    ] = None,
    partition: Annotated[
        str | None,
        typer.Option(help="iid | dirichlet:ALPHA | column:NAME (default: iid)."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="CSV or Parquet table, image folder (one folder per class; PNG, "
            "JPEG, DICOM) or image manifest (path column) (default: "
            "embedded breast-cancer data)."
        ),
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Label column of --data (default: target).")
    ] = None,
    epsilon: Annotated[
        float | None,
        typer.Option(help="Privacy budget per site for this run (default: 3)."),
    ] = None,
    delta: Annotated[
        float | None,
        typer.Option(
            help="Delta per site (default: 1e-5, below 1/n of the largest site)."
        ),
    ] = None,
    max_grad_norm: Annotated[
        float | None, typer.Option(help="Per-sample clipping norm C (default: 1.0).")
    ] = None,
    accountant: Annotated[
        str | None, typer.Option(help="rdp | prv (default: rdp).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="mlp | logreg (tables), cnn | resnet18 (images), or your own "
            "package.module:factory (default: mlp)."
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Embedded data: breast-cancer (table) | digits (8x8 images)."
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="auto | classification | regression (default: auto, from the "
            "target: numeric with fractional or many values is regression)."
        ),
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(help="Images are resized to SIZE x SIZE (default: 64)."),
    ] = None,
    augment_copies: Annotated[
        int | None,
        typer.Option(
            help="Images: augmented copies per example, averaged before clipping "
            "(augmentation multiplicity; no extra epsilon) (default: 1)."
        ),
    ] = None,
    augment_rotation: Annotated[
        float | None, typer.Option(help="Images: random rotation, degrees.")
    ] = None,
    augment_crop: Annotated[
        int | None, typer.Option(help="Images: random shift by up to N pixels.")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="auto | cpu | cuda: where sites train (default: auto)."),
    ] = None,
    gpu_fraction: Annotated[
        float | None,
        typer.Option(help="Share of a GPU per simulated site (default: 0, none)."),
    ] = None,
    min_sites: Annotated[
        int | None, typer.Option(help="Fewest sites a round needs (default: 2).")
    ] = None,
    fraction_train: Annotated[
        float | None,
        typer.Option(help="Share of sites sampled per round (default: 1.0)."),
    ] = None,
    noise_multiplier: Annotated[
        float | None,
        typer.Option(
            help="Fixed noise multiplier every site must use; 0 = each site plans "
            "sigma for --epsilon (default: 0)."
        ),
    ] = None,
    vaults: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated site vaults (from `fedvault data import`), one "
            "simulated site each; use with --key and --target."
        ),
    ] = None,
    key: Annotated[
        Path | None, typer.Option(help="Key file of the vaults given with --vaults.")
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(
            help="Folder of the simulated sites' state (ledgers, policies); run "
            "again on it to continue from the remaining budgets (default: temporary)."
        ),
    ] = None,
    site_budget: Annotated[
        float | None,
        typer.Option(
            help="Lifetime epsilon written into new site policies (default: --epsilon)."
        ),
    ] = None,
    client_dp: Annotated[
        str | None,
        typer.Option(
            help="Client-level DP at the coordinator (Flower's DP wrappers): off | "
            "server-fixed | client-fixed | server-adaptive | client-adaptive "
            "(default: off). Fixed modes report a client-level epsilon."
        ),
    ] = None,
    client_noise_multiplier: Annotated[
        float | None,
        typer.Option(help="Client-level noise multiplier z (default: 1.0)."),
    ] = None,
    client_clipping_norm: Annotated[
        float | None,
        typer.Option(
            help="Client-level clipping norm C of each site's update (initial "
            "value for adaptive modes) (default: 1.0)."
        ),
    ] = None,
    client_delta: Annotated[
        float | None,
        typer.Option(help="Delta of the client-level guarantee (default: 1e-5)."),
    ] = None,
    secagg: Annotated[
        bool,
        typer.Option(
            "--secagg",
            help="Secure aggregation (Flower's SecAgg+): the coordinator learns only "
            "the sum of the sites' updates. With --client-dp use client-fixed.",
        ),
    ] = False,
    compress: Annotated[
        str | None,
        typer.Option(help="none | int8: int8 updates on the wire (default: none)."),
    ] = None,
    no_dp: Annotated[
        bool,
        typer.Option(
            "--no-dp", help="Train WITHOUT differential privacy (comparison only)."
        ),
    ] = False,
    init_model: Annotated[
        Path | None, typer.Option(help="Start from this model (file or run folder).")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed for partitioning, init and training (default: 0)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default: fedvault-runs/sim-TIME).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file of settings; options override it.")
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    values = read_toml(config) if config else {}
    values |= _given(click.get_current_context().params)  # every option above
    cfg = sim.load_config(values)
    out_dir = Path(
        cfg.options.out or f"fedvault-runs/sim-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if not cfg.training.dp:
        console.print(
            "[bold red]WARNING: --no-dp: training WITHOUT differential privacy; "
            "no privacy guarantee applies to this run.[/]"
        )
    summary = _run_with_progress(cfg, out_dir, output_format)
    if output_format is OutputFormat.JSON:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        _print_tables(summary, out_dir)
    if summary["status"] != "completed":
        _why_stopped(summary)
        raise typer.Exit(EXIT_RUN_FAILED)


def _why_stopped(summary: dict[str, Any]) -> None:
    """On stderr: why the run stopped, what the sites said, and what to change.
    (A run that stops early exits non-zero, as `fedvault server start` does.)"""
    say(_err, f"error: the run stopped early: {summary['stop_reason']}")
    said: dict[str, list[str]] = {}
    for name, site in summary["sites"].items():
        for decline in site["declines"][:1]:
            said.setdefault(f"{decline['reason']}: {decline['detail']}", []).append(
                name
            )
    for detail, names in said.items():
        say(_err, f"  {', '.join(names)} declined ({detail})")
    if not summary["history"]:
        say(_err, "  no round completed: model.pt holds the untrained initial model")
    if any(d.startswith("budget") for d in said):
        say(
            _err,
            "  to fit the budget: a larger --epsilon (or --site-budget), fewer "
            "--rounds or --local-epochs, or a larger --batch-size (fewer steps)",
        )


simulate.__doc__ = _HELP


def _run_with_progress(
    cfg: sim.SimulationConfig, out: Path, output_format: OutputFormat
) -> dict[str, Any]:
    progress = progress_bar(console, output_format)
    task = progress.add_task(
        "rounds", total=cfg.training.rounds, status="starting Flower"
    )
    seen = 0

    def poll() -> None:
        nonlocal seen
        path = out / PROGRESS_FILE
        if not path.exists():
            return
        lines = path.read_text().splitlines()
        for line in lines[seen:]:
            event = json.loads(line)
            if event["event"] == "ready":
                progress.update(task, status=f"{len(event['sites'])} sites ready")
            elif event["event"] == "round":
                acc = event.get("accuracy")
                status = f"accuracy {acc:.3f}" if isinstance(acc, float) else ""
                progress.update(task, completed=event["round"], status=status)
        seen = len(lines)

    with progress:
        return sim.run(cfg, out, on_poll=poll)


def _print_tables(summary: dict[str, Any], out: Path) -> None:
    simulate_tables.print_tables(console, summary, out)
    for line in flagged_lines(out):  # --init-model: features shifted since the parent
        console.print(f"[yellow]{line}[/]", highlight=False)
