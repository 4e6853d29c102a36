"""``fedvault privacy``: check what the accountant promises against what an attack
can find (``fedvault privacy audit``)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from fedvault.common.cli import (
    FormatOption,
    OutputFormat,
    command_group,
    errors_as_exit,
    output_console,
    progress_bar,
    say,
)
from fedvault.server import privacy_audit as pa
from fedvault.server.rundir import PROGRESS_FILE

privacy_app = command_group(
    "privacy", "Audit differential privacy empirically (canaries, one training run)."
)

_defaults = pa.AuditSettings()


@privacy_app.command("audit")
@errors_as_exit(os_errors=True)
def audit(
    canaries: Annotated[
        int, typer.Option(help="Canaries m; each is in the training data w.p. 1/2.")
    ] = _defaults.canaries,
    guess_in: Annotated[
        int, typer.Option(help="Canaries guessed 'in' (lowest loss; k+).")
    ] = _defaults.guess_in,
    guess_out: Annotated[
        int, typer.Option(help="Canaries guessed 'out' (highest loss; k-).")
    ] = _defaults.guess_out,
    sites: Annotated[int, typer.Option(help="Simulated sites.")] = _defaults.sites,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = _defaults.rounds,
    local_epochs: Annotated[
        int, typer.Option(help="Local epochs per round.")
    ] = _defaults.local_epochs,
    epsilon: Annotated[
        list[float] | None,
        typer.Option(help="Target epsilon of a DP run (repeat for several runs)."),
    ] = None,
    dp_only: Annotated[
        bool, typer.Option("--dp-only", help="Skip the --no-dp comparison run.")
    ] = False,
    confidence: Annotated[
        float, typer.Option(help="Confidence of the lower bound.")
    ] = _defaults.confidence,
    seed: Annotated[int, typer.Option(help="Seed of canaries and runs.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(help="Keep each run folder under here (default: removed)."),
    ] = None,
    output_format: FormatOption = OutputFormat.TEXT,
) -> None:
    """Insert canaries into simulated sites' training rows, train once with DP and
    once without (--no-dp), and print the empirical lower bound on epsilon (one-run
    audit of Steinke, Nasr & Jagielski 2023) beside the accountant's epsilon.

    The bound holds with the given confidence over the canaries' coin flips: a DP
    run's lower bound above its accountant epsilon would point to a privacy bug."""
    settings = pa.AuditSettings(
        canaries=canaries,
        guess_in=guess_in,
        guess_out=guess_out,
        sites=sites,
        rounds=rounds,
        local_epochs=local_epochs,
        epsilons=tuple(epsilon) if epsilon else _defaults.epsilons,
        no_dp=not dp_only,
        confidence=confidence,
        seed=seed,
    )
    console = output_console()
    progress = progress_bar(console, output_format)
    with progress:
        results = pa.run_audit(
            settings,
            out=out,
            poller=lambda label, run_dir: _poller(
                progress, label, run_dir, settings.rounds
            ),
        )
    if output_format is OutputFormat.JSON:
        document = {
            "confidence": settings.confidence,
            "audits": [r.as_dict() for r in results],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    console.print(_table(results, settings.confidence))
    say(
        console,
        "empirical epsilon: a lower bound at the stated delta and confidence; the "
        "accountant's epsilon is an upper bound (largest over the sites)",
    )


def _poller(
    progress: Progress, label: str, run_dir: Path, rounds: int
) -> Callable[[], None]:
    task: TaskID = progress.add_task(label, total=rounds, status="starting Flower")
    seen = 0

    def poll() -> None:
        nonlocal seen
        path = run_dir / PROGRESS_FILE
        if not path.exists():
            return
        lines = path.read_text().splitlines()
        for line in lines[seen:]:
            event = json.loads(line)
            if event.get("event") == "round":
                progress.update(task, completed=event["round"], status="")
        seen = len(lines)

    return poll


def _table(results: list[pa.AuditResult], confidence: float) -> Table:
    table = Table(title=f"Privacy audit (one run, {confidence:.0%} confidence)")
    for name in ("configuration", "accountant ε", "δ", "empirical ε ≥"):
        table.add_column(name)
    for name in ("canaries", "guesses", "correct", "accuracy"):
        table.add_column(name, justify="right")
    for r in results:
        table.add_row(
            r.configuration,
            "∞ (no DP)"
            if r.accountant_epsilon is None
            else _down(r.accountant_epsilon),
            f"{r.delta:g}",
            _down(r.empirical_epsilon),
            str(r.canaries),
            str(r.guesses),
            str(r.correct),
            "-" if r.accuracy is None else f"{r.accuracy:.3f}",
        )
    return table


def _down(value: float) -> str:
    """Rounded down to 3 decimals (as every epsilon fedvault prints)."""
    return f"{math.floor(value * 1000) / 1000:.3f}"
