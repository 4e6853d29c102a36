"""``fedvault report``: one self-contained HTML report of a run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedvault.common.cli import errors_as_exit
from fedvault.common.errors import DataError
from fedvault.server import html_report

console = Console(soft_wrap=True)


@errors_as_exit(os_errors=True)
def report(
    run: Annotated[
        Path,
        typer.Argument(
            help="Run folder (fedvault simulate --out, fedvault server start)."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="The HTML file; default: report.html in the run folder."),
    ] = None,
) -> None:
    """Write one self-contained HTML report of a run.

    Accuracy, AUC and loss per round, epsilon per site against its budget,
    declines and failures per round, and the model card. No scripts, no network
    requests; plots are inline images. Open it in any browser."""
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise DataError(f"{out}: not a file in an existing folder")
    started = time.monotonic()
    path = html_report.write(run, out)
    console.print(
        f"Wrote {path} ({path.stat().st_size / 1e6:.2f} MB in "
        f"{time.monotonic() - started:.1f} s); open it in a browser.",
        highlight=False,
    )
