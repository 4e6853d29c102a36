"""``fedvault client plan``: what a study would cost this site, before it takes
part (:mod:`fedvault.client.plan`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedvault.client.pending import HeldRun, read_held
from fedvault.client.plan import RunPlan, plan_run, plan_study
from fedvault.client.site_config import load_site_config
from fedvault.common.cli import (
    FormatOption,
    OutputFormat,
    errors_as_exit,
    output_console,
    say,
)
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import ConfigError


def _lines(p: RunPlan) -> list[str]:
    lines = [f"site {p.site}: a study of {p.rounds} rounds"]
    columns = ", ".join(p.features) if p.features else "every column"
    lines.append(f"feature columns: {columns} (schema hash {p.schema_hash})")
    if p.rows is not None:
        lines.append(f"training rows: {p.rows}")
    if p.sigma is not None:
        lines.append(f"noise multiplier (sigma): {p.sigma:.4g}")
    if p.run_epsilon is not None:
        lines.append(f"epsilon this run would spend: {p.run_epsilon:.4f}")
    lines.append(f"lifetime epsilon spent: {p.spent:.4f} of {p.epsilon_max:g}")
    if p.lifetime_after is not None and p.left is not None:
        lines.append(
            f"after the run: {p.lifetime_after:.4f} spent, {max(p.left, 0.0):.4f} left"
        )
    if p.decline is not None:
        lines.append(f"the site would DECLINE ({p.decline.reason}): {p.decline.detail}")
    else:
        lines.append("the site would take part")
    return lines


@errors_as_exit(os_errors=True)
def plan(
    study: Annotated[
        str,
        typer.Argument(
            help="The study's TOML ([coordinator] target, [training]), or the id "
            "of a run this site holds for approval (`client pending`)."
        ),
    ],
    config: Annotated[Path, typer.Option(help="The site's TOML settings.")] = Path(
        "site.toml"
    ),
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """What a study (or a run this site holds for approval) would cost this site
    before it approves: its sigma, the epsilon it would spend, what would be left
    of the lifetime budget, and whether (and why) the site would decline. Nothing
    is trained or recorded; of the data only the number of training rows is used."""
    cfg = load_site_config(config)
    if Path(study).is_file():
        result = plan_study(cfg, Path(study))
    else:
        held = _held(cfg.state_dir, study)
        settings = TrainingConfig.from_run_config(held.settings)
        result = plan_run(cfg, settings, held.target)
        if output_format is OutputFormat.TEXT:
            say(
                output_console(),
                f"run {held.run_id} (run key {held.run_key}), held since "
                f"{held.received}: `fedvault client approve {held.run_id}` lets it run",
            )
    if output_format is OutputFormat.JSON:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    console = output_console()
    for line in _lines(result):
        say(console, line)


def _held(state_dir: Path, name: str) -> HeldRun:
    try:
        return read_held(state_dir, name)
    except ConfigError:
        raise ConfigError(
            f"{name}: no such study file, and no run {name} is held at this site"
        ) from None
