"""The ``fedvault`` command and the kit every command group is built with.

Roles register commands under the ``fedvault.commands`` entry-point group (a
``typer.Typer`` becomes a sub-command group, a function a command), so this module
imports neither ``fedvault.server`` nor ``fedvault.client``.

Naming rule: each command group lives in one module ``fedvault/<role>/<group>_cli.py``
at the top of its role's package, named after the group (``fedvault server`` in
``fedvault.server.server_cli``, ``fedvault client ledger`` in
``fedvault.client.ledger_cli``, ``fedvault data`` in ``fedvault.client.data_cli``),
and the group object is ``<group>_app`` (a single command, like ``simulate``, is a
function of that name). Every group is made by :func:`command_group`.

The kit:

- :func:`command_group`: a ``typer.Typer`` with fedvault's settings;
- :class:`OutputFormat` and :data:`FormatOption`: the one ``--format text|json``;
- :func:`errors_as_exit`: the one mapping of errors to exit codes and one-line
  messages (``error: ...`` on stderr);
- :func:`say`: a message printed verbatim (no markup, never wrapped);
- :func:`print_json`: a ``--format json`` document, its keys in snake_case;
- :func:`output_console`: a console whose tables keep whole lines in a file;
- :func:`progress_bar`: the rich progress bar of rounds, quiet when not wanted.
"""

from __future__ import annotations

import json
import logging
import platform
import signal
import sys
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from enum import StrEnum
from importlib.metadata import entry_points, version
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from fedvault.common.errors import FedVaultError

ENTRY_POINT_GROUP = "fedvault.commands"
EXIT_RUN_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

_err_console = Console(stderr=True, soft_wrap=True)


class OutputFormat(StrEnum):
    """What a command prints: tables and sentences, or one JSON document."""

    TEXT = "text"
    JSON = "json"


FormatOption = Annotated[OutputFormat, typer.Option("--format", help="text or json.")]
"""The ``--format`` option of every command whose output is data."""


def command_group(name: str, help: str) -> typer.Typer:
    """A Typer command group with fedvault's settings.

    It shows its help when called without a command, offers no shell-completion
    options, and lets errors through undecorated (the ``fedvault`` entry point turns
    them into one line, see :func:`errors_as_exit`).
    """
    return typer.Typer(
        name=name,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


def output_console(*, stderr: bool = False) -> Console:
    """A console for a command's output: as wide as the terminal, or 200 columns
    when the output goes to a file or a pipe (tables are not squeezed into 80)."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=200)


def say(console: Console, text: str, *, style: str | None = None) -> None:
    """Print ``text`` exactly as written: no console markup (``[privacy]`` stays),
    no highlighting or emoji codes, never wrapped (a path or a command stays whole
    for copying). ``style`` colours the whole line on a terminal."""
    console.print(
        text, style=style, markup=False, highlight=False, emoji=False, soft_wrap=True
    )


def snake_case_keys(
    value: Any, *, by_name: Collection[str] = (), verbatim: Collection[str] = ()
) -> Any:
    """``value`` with every dict key in snake_case (``last-round``:
    ``last_round``), the one case of the JSON fedvault's commands print. The keys
    of a map under a key in ``by_name`` are names (of sites, of columns) and stay;
    what is under a key in ``verbatim`` (a stored schema, in its file's words)
    stays as it is."""
    if isinstance(value, list):
        return [snake_case_keys(v, by_name=by_name, verbatim=verbatim) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key in verbatim:
            out[key.replace("-", "_")] = item
        elif key in by_name and isinstance(item, dict):
            out[key.replace("-", "_")] = {
                name: snake_case_keys(v, by_name=by_name, verbatim=verbatim)
                for name, v in item.items()
            }
        else:
            new = snake_case_keys(item, by_name=by_name, verbatim=verbatim)
            out[key.replace("-", "_")] = new
    return out


def print_json(
    document: Any, *, by_name: Collection[str] = (), verbatim: Collection[str] = ()
) -> None:
    """Print ``document`` as a command's ``--format json`` output: indented, its
    keys in snake_case (see :func:`snake_case_keys`)."""
    shown = snake_case_keys(document, by_name=by_name, verbatim=verbatim)
    sys.stdout.write(json.dumps(shown, indent=2) + "\n")


def error_exit(message: str, code: int) -> typer.Exit:
    """Print ``error: MESSAGE`` as one line on stderr; return the Exit to raise."""
    _err_console.print(
        f"[bold red]error:[/] {escape(' '.join(message.split()))}",
        highlight=False,
        emoji=False,
    )
    return typer.Exit(code)


def _exit_code(exc: FedVaultError) -> int:
    """The user's mistakes are the errors that are also ``ValueError``."""
    return EXIT_USER_ERROR if isinstance(exc, ValueError) else EXIT_RUN_FAILED


@contextmanager
def errors_as_exit(*, os_errors: bool = False) -> Iterator[None]:
    """Turn a :class:`FedVaultError` raised inside into one ``error:`` line on stderr
    and an exit status: :data:`EXIT_USER_ERROR` for the user's mistakes (settings,
    data, keys: the errors that are also ``ValueError``), :data:`EXIT_RUN_FAILED`
    when the run failed (privacy refusals, federation failures). With
    ``os_errors``, an ``OSError`` too (``error: STRERROR: FILENAME``; exit 2 for a
    path the user gave that is missing or not usable, else 1). The ``fedvault``
    entry point passes ``os_errors``: no file-system error ends in a traceback.

    Use it as a ``with`` block or as a decorator of a command.

    Raises:
        typer.Exit: in place of those errors; anything else passes through.
    """
    try:
        yield
    except FedVaultError as exc:
        raise error_exit(str(exc), _exit_code(exc)) from None
    except OSError as exc:
        if not os_errors:
            raise
        message = str(exc.strerror or exc)
        if exc.filename is not None:
            message += f": {exc.filename}"
        raise error_exit(message, _os_exit_code(exc)) from None


# A path the user gave that is missing, of the wrong kind or not theirs to use is
# their mistake (exit 2); anything else the file system says (a full disk, an I/O
# error) failed the run (exit 1).
_USER_PATH_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def _os_exit_code(exc: OSError) -> int:
    return EXIT_USER_ERROR if isinstance(exc, _USER_PATH_ERRORS) else EXIT_RUN_FAILED


def progress_bar(console: Console, output_format: OutputFormat) -> Progress:
    """A rich progress bar of rounds: description, bar, done/total, status, time.

    Its tasks take a ``status`` field (``add_task("rounds", total=n, status="")``).
    It stays silent with ``--format json`` and when ``console`` is not a terminal.
    """
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=output_format is OutputFormat.JSON or not console.is_terminal,
    )


def versions() -> str:
    """``fedvault X (Flower Y, Python Z)``: what a coordinator and its sites compare."""
    return (
        f"fedvault {version('fedvault')} (Flower {version('flwr')}, "
        f"Python {platform.python_version()})"
    )


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(versions() + "\n")
        raise typer.Exit


def build_app() -> typer.Typer:
    """The ``fedvault`` command, with every group registered under
    ``fedvault.commands``."""
    app = command_group(
        "fedvault",
        "Privacy-preserving federated learning: Flower + Opacus DP-SGD, "
        "encrypted site data and per-site privacy ledgers.",
    )

    @app.callback()
    def _root(
        show_version: Annotated[
            bool,
            typer.Option(
                "--version",
                callback=_print_version,
                is_eager=True,
                help="Print fedvault's, Flower's and Python's versions and exit.",
            ),
        ] = False,
    ) -> None:
        """Privacy-preserving federated learning (run a sub-command with --help)."""

    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        target: Any = ep.load()
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=ep.name)
        else:
            app.command(name=ep.name)(target)
    return app


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point: user errors become one line and a non-zero exit."""
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C: child processes are
    # stopped and temporary folders (a simulation's copies of the data) removed.
    # A command with its own SIGTERM meaning (server start) sets its own handler.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with errors_as_exit(os_errors=True):
            code = build_app()(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except KeyboardInterrupt:
        say(_err_console, "interrupted", style="yellow")
        sys.exit(EXIT_INTERRUPTED)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # usage errors carry their own exit code
        exc.show()
        sys.exit(exc.exit_code)
