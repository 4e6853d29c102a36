"""What a site did and where it stands, read from its own state folder.

``STATE/answers.jsonl`` holds one line per answer the site gave the coordinator
(written by :mod:`fedvault.client.answer_log`); :func:`site_status` sums it up for
``fedvault client status``: whether ``client start`` runs, the current run and
round, the last contact, the declines and failures of the run, and the epsilon
spent (this run, lifetime, budget) as the site's accountant last reported it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ANSWERS_FILE = "answers.jsonl"


def describe(entry: dict[str, Any]) -> str:
    """One line for the operator: ``round 3 train: trained (epsilon ...)``."""
    if entry.get("answer") == "notice":
        return f"the coordinator says: {entry.get('reason', '')}"
    where = entry.get("message", "?")
    if entry.get("round") is not None:
        where = f"round {entry['round']} {where}"
    line = f"{where}: {entry.get('answer', '?')}"
    if entry.get("reason"):
        line += f" ({entry['reason']})"
    if entry.get("epsilon") is not None:
        line += (
            f"; epsilon {_num(entry['epsilon'])} this run, "
            f"{_num(entry.get('epsilon-lifetime'))} of "
            f"{_num(entry.get('epsilon-budget'))} lifetime"
        )
    return line


def _num(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "-"


def read_answers(
    state_dir: Path, *, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """The answers recorded from byte ``offset`` on, and the offset after them
    (a line being written is left for the next call)."""
    path = state_dir / ANSWERS_FILE
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    return list(_parse(complete)), offset + len(complete)


def _parse(data: bytes) -> Iterator[dict[str, Any]]:
    for line in data.decode(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            yield entry


def site_status(state_dir: Path, *, running_pid: int | None) -> dict[str, Any]:
    """The site's state as ``fedvault client status`` shows it (kebab-case keys)."""
    answers, _ = read_answers(state_dir)
    doc: dict[str, Any] = {
        "running": running_pid is not None,
        "pid": running_pid,
        "run": None,
        "round": None,
        "last-contact": None,
        "last-answer": None,
        "declines": [],
        "failures": [],
        "epsilon": None,
        "epsilon-lifetime": None,
        "epsilon-budget": None,
    }
    if not answers:
        return doc
    last = answers[-1]
    run = last.get("run")
    this_run = [a for a in answers if a.get("run") == run]
    rounds = [a["round"] for a in this_run if a.get("round") is not None]
    doc |= {
        "run": run,
        "round": max(rounds) if rounds else None,
        "last-contact": time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(float(last.get("time", 0)))
        ),
        "last-answer": describe(last),
        "declines": [describe(a) for a in this_run if a.get("answer") == "declined"],
        "failures": [describe(a) for a in this_run if a.get("answer") == "failed"],
    }
    spent = [a for a in this_run if a.get("epsilon") is not None]
    if spent:
        doc |= {k: spent[-1].get(k) for k in ("epsilon", "epsilon-lifetime")}
        doc["epsilon-budget"] = spent[-1].get("epsilon-budget")
    return doc
