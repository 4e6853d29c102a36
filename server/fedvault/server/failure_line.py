"""A site's failure as one line, for the tables, logs and ``summary.json``."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)\b:?.*)$")


def one_line(reason: str, limit: int = 300) -> str:
    """A site's failure as one line: its error's class and message.

    Flower hands the coordinator a ClientApp's failure as a traceback (in
    simulation wrapped by Ray, with colour codes); the last line naming an error
    is what the site's operator and the coordinator need. Colour codes go.
    """
    lines = [ln.strip() for ln in _ANSI.sub("", reason).splitlines() if ln.strip()]
    errors = [ln for ln in lines if _ERROR_LINE.match(ln)]
    line = (errors or lines or ["unknown failure"])[-1]
    return line if len(line) <= limit else line[: limit - 1] + "…"
