"""What Flower's processes write, made readable for an operator.

Flower colours its console output with terminal escape codes (always: it has no
switch), logs every HTTP request the SuperLink serves, and ends a failed process
with ``Exit Code: N`` and a link. fedvault reads a Flower process's output through a
pipe (:class:`LogPump`) and appends it to the log file without colour codes and
without the lines that only say a routine request succeeded; and it turns Flower's
exit codes into what to do (:func:`explain_exit`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
from collections.abc import Sequence
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_ANSI_BYTES = re.compile(_ANSI.pattern.encode())
# A log file is rotated at this size, keeping this many older ones (NAME.1 newest).
LOG_MAX_BYTES = 10 * 2**20
LOG_BACKUPS = 3
_EXIT = re.compile(r"Exit Code: (\d+)\s*\n(.*?)(?:\n\s*\n|\Z)", re.S)

# What each Flower exit code (flwr.supercore.exit.ExitCode) means for fedvault's
# operators; codes not listed are reported with Flower's own words.
_EXIT_HINTS = {
    104: "the SuperLink was started with invalid arguments",
    105: "state.db was written by another Flower version: run the fedvault that "
    "wrote it, or start a new run folder",
    302: "private-key is not a usable site key: make one with `fedvault client keygen`",
    303: "insecure = true cannot be combined with a site key (private-key)",
    305: "cannot connect to the coordinator",
    600: "an address is not HOST:PORT",
    603: "ca-certificate is not a usable CA certificate",
    604: "a file named in the settings does not exist",
    605: "the coordinator's certificate or key (server.crt, server.key) cannot be used",
    606: "the coordinator and this side run incompatible Flower versions: compare "
    "`fedvault --version` on both",
}


def plain(text: str) -> str:
    """``text`` without terminal escape codes."""
    return _ANSI.sub("", text)


def explain_exit(log_text: str) -> str | None:
    """What the last ``Exit Code: N`` in a Flower log means, with Flower's own
    detail, in one line; None when the log holds no exit code."""
    found = list(_EXIT.finditer(plain(log_text)))
    if not found:
        return None
    code = int(found[-1].group(1))
    lines = [ln.strip() for ln in found[-1].group(2).splitlines() if ln.strip()]
    detail = " ".join(ln for ln in lines if not ln.startswith("For more information"))
    hint = _EXIT_HINTS.get(code, "a Flower process failed")
    return f"{hint} (Flower exit code {code}: {detail[:300]})"


class _PrivateRotatingFile(RotatingFileHandler):
    """A rotating log file: every file 0600 whatever the umask, and a line that
    cannot be written is dropped silently (the process must never block)."""

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging)
        """Drop the line."""


class LogPump(threading.Thread):
    """Copy a process's output into ``path`` line by line, without colour codes
    and without the lines ``quiet`` matches, until every writer has closed it.

    The file (mode 0600) is rotated at :data:`LOG_MAX_BYTES`, keeping
    :data:`LOG_BACKUPS` older ones (``NAME.1`` the newest), by
    :class:`logging.handlers.RotatingFileHandler`. Never raises: a line that
    cannot be written is dropped, so the process never blocks on a full pipe.
    """

    def __init__(
        self, stream: IO[bytes], path: Path, quiet: Sequence[re.Pattern[bytes]] = ()
    ) -> None:
        super().__init__(name=f"log-pump {path.name}", daemon=True)
        self.stream, self.path, self.quiet = stream, path, tuple(quiet)

    def run(self) -> None:
        out = _PrivateRotatingFile(
            self.path,
            maxBytes=LOG_MAX_BYTES,
            backupCount=LOG_BACKUPS,
            encoding="utf-8",
            errors="replace",
        )
        out.terminator = ""  # each line keeps its own newline
        with contextlib.closing(out), self.stream:
            for line in iter(self.stream.readline, b""):
                clean = _ANSI_BYTES.sub(b"", line)
                if any(q.search(clean) for q in self.quiet):
                    continue
                text = clean.decode("utf-8", "replace")
                out.emit(logging.makeLogRecord({"msg": text, "args": None}))
