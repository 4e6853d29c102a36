"""The ``fedvault`` command: one Typer app assembled from each role's command groups.

Roles register commands under the ``fedvault.commands`` entry-point group (a
``typer.Typer`` becomes a sub-command group, a function a command), so this module
imports neither ``fedvault.server`` nor ``fedvault.client``.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import entry_points
from typing import Any

import typer
from rich.console import Console

from fedvault.common.errors import FedVaultError

ENTRY_POINT_GROUP = "fedvault.commands"
EXIT_USER_ERROR = 2
EXIT_RUN_FAILED = 1

err_console = Console(stderr=True, soft_wrap=True)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="fedvault",
        help="Privacy-preserving federated learning: Flower + Opacus DP-SGD, "
        "encrypted site data and per-site privacy ledgers.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root() -> None:
        """Privacy-preserving federated learning (run a sub-command with --help)."""

    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        target: Any = ep.load()
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=ep.name)
        else:
            app.command(name=ep.name)(target)
    return app


def fail(message: str, code: int = EXIT_USER_ERROR) -> typer.Exit:
    """Print one clear line on stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def main() -> None:
    """Console entry point: user errors become one line and a non-zero exit."""
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        code = build_app()(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except FedVaultError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(EXIT_USER_ERROR if isinstance(exc, ValueError) else EXIT_RUN_FAILED)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
