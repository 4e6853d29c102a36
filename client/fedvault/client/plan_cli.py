"""``fedvault client plan``: what a study would cost this site, before it takes
part (:mod:`fedvault.client.plan`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedvault.client.plan import RunPlan, plan_study
from fedvault.client.site_config import load_site_config
from fedvault.common.cli import (
    FormatOption,
    OutputFormat,
    errors_as_exit,
    output_console,
    say,
)


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
        Path,
        typer.Argument(help="The study's TOML ([coordinator] target, [training])."),
    ],
    config: Annotated[Path, typer.Option(help="The site's TOML settings.")] = Path(
        "site.toml"
    ),
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """What a study would cost this site before it approves: its sigma, the epsilon
    it would spend, what would be left of the lifetime budget, and whether (and why)
    the site would decline. Nothing is trained or recorded; of the data only the
    number of training rows is used."""
    result = plan_study(load_site_config(config), study)
    if output_format is OutputFormat.JSON:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    console = output_console()
    for line in _lines(result):
        say(console, line)
