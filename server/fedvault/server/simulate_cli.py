"""The ``fedvault simulate`` command: options, live progress and the final tables."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console

from fedvault.common import settings_help
from fedvault.common.cli import (
    EXIT_RUN_FAILED,
    FormatOption,
    OutputFormat,
    progress_bar,
    say,
)
from fedvault.common.config import TrainingConfig, key_of, read_toml
from fedvault.server import simulate as sim
from fedvault.server import simulate_tables
from fedvault.server.drift import flagged_lines
from fedvault.server.rundir import PROGRESS_FILE
from fedvault.server.simulate_data import CNN_DEFAULTS

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
# Every setting's default: the dataclasses' (the cnn's own where it has one).
_DEFAULTS: dict[str, Any] = {
    key_of(f.name): settings_help.default_of(f)
    for cls in (TrainingConfig, sim.SimulationOptions)
    for f in dataclasses.fields(cls)
}


def shown_default(key: str) -> str:
    """A setting's default as simulate's ``--help`` shows it."""
    text = settings_help.value_text(_DEFAULTS[key])
    if key in CNN_DEFAULTS:
        text += f"; {CNN_DEFAULTS[key]} with --model cnn"
    if key == "delta":
        text += ", or below 1/n of the largest site"
    return text


def setting_help(key: str) -> str:
    """The help of simulate's option for setting ``key``: its meaning
    (:mod:`fedvault.common.settings_help`) and its default."""
    meaning = {**settings_help.SIMULATION, **settings_help.TRAINING}[key]
    prefix = {
        "secagg": "sets secagg = true: ",
        "dp": "sets dp = false: ",
        "features": "one --features per column: ",
    }.get(key, "")
    return settings_help.option_help(meaning, shown_default(key), prefix=prefix)


def _opt(key: str, *flags: str) -> Any:
    return typer.Option(*flags, help=setting_help(key))


def _given(params: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line, under their TOML keys.

    ``None`` means "not given", so a value from --config stays; paths travel as
    strings; the switches only ever turn something on (--secagg) or off (--no-dp).
    """
    values = {
        name.replace("_", "-"): str(value) if isinstance(value, Path) else value
        for name, value in params.items()
        if name not in _NOT_SETTINGS and value not in (None, [], ())
    }
    if params["secagg"]:
        values["secagg"] = True
    if params["no_dp"]:
        values["dp"] = False
    return values


def simulate(  # every setting of --config, an option of the same name
    sites: Annotated[int | None, _opt("sites")] = None,
    rounds: Annotated[int | None, _opt("rounds")] = None,
    local_epochs: Annotated[int | None, _opt("local-epochs")] = None,
    batch_size: Annotated[int | None, _opt("batch-size")] = None,
    lr: Annotated[float | None, _opt("lr")] = None,
    momentum: Annotated[float | None, _opt("momentum")] = None,
    strategy: Annotated[str | None, _opt("strategy")] = None,
    proximal_mu: Annotated[float | None, _opt("proximal-mu")] = None,
    malicious_sites: Annotated[int | None, _opt("malicious-sites")] = None,
    trim_fraction: Annotated[float | None, _opt("trim-fraction")] = None,
    partition: Annotated[str | None, _opt("partition")] = None,
    data: Annotated[Path | None, _opt("data")] = None,
    target: Annotated[str | None, _opt("target")] = None,
    test_share: Annotated[float | None, _opt("test-share")] = None,
    epsilon: Annotated[float | None, _opt("epsilon")] = None,
    delta: Annotated[float | None, _opt("delta")] = None,
    max_grad_norm: Annotated[float | None, _opt("max-grad-norm")] = None,
    accountant: Annotated[str | None, _opt("accountant")] = None,
    model: Annotated[str | None, _opt("model")] = None,
    hidden: Annotated[int | None, _opt("hidden")] = None,
    features: Annotated[list[str] | None, _opt("features")] = None,
    dataset: Annotated[str | None, _opt("dataset")] = None,
    task: Annotated[str | None, _opt("task")] = None,
    regression_loss: Annotated[str | None, _opt("regression-loss")] = None,
    image_size: Annotated[int | None, _opt("image-size")] = None,
    augment_copies: Annotated[int | None, _opt("augment-copies")] = None,
    augment_rotation: Annotated[float | None, _opt("augment-rotation")] = None,
    augment_crop: Annotated[int | None, _opt("augment-crop")] = None,
    device: Annotated[str | None, _opt("device")] = None,
    gpu_fraction: Annotated[float | None, _opt("gpu-fraction")] = None,
    min_sites: Annotated[int | None, _opt("min-sites")] = None,
    fraction_train: Annotated[float | None, _opt("fraction-train")] = None,
    round_timeout: Annotated[float | None, _opt("round-timeout")] = None,
    timeout: Annotated[float | None, _opt("timeout")] = None,
    noise_multiplier: Annotated[float | None, _opt("noise-multiplier")] = None,
    vaults: Annotated[str | None, _opt("vaults")] = None,
    key: Annotated[Path | None, _opt("key")] = None,
    state: Annotated[Path | None, _opt("state")] = None,
    site_budget: Annotated[float | None, _opt("site-budget")] = None,
    client_dp: Annotated[str | None, _opt("client-dp")] = None,
    client_noise_multiplier: Annotated[
        float | None, _opt("client-noise-multiplier")
    ] = None,
    client_clipping_norm: Annotated[float | None, _opt("client-clipping-norm")] = None,
    client_delta: Annotated[float | None, _opt("client-delta")] = None,
    secagg: Annotated[bool, _opt("secagg", "--secagg")] = False,
    compress: Annotated[str | None, _opt("compress")] = None,
    no_dp: Annotated[bool, _opt("dp", "--no-dp")] = False,
    init_model: Annotated[Path | None, _opt("init-model")] = None,
    seed: Annotated[int | None, _opt("seed")] = None,
    out: Annotated[Path | None, _opt("out")] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file of settings (the options' names as keys); "
            "options given here override it."
        ),
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
