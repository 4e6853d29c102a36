"""What a coordinator's run folder holds, and the one thing to say about it.

A run folder is in exactly one state, read from its files (nothing else is kept):

============  =================================================================
state         when
============  =================================================================
new           no run yet (no ``output/progress.jsonl`` or ``summary.json``)
running       a live coordinator holds the folder's lock (``coordinator.lock``)
stopped       unfinished and resumable: a checkpoint, no summary (stopped by
              ``fedvault server stop``, Ctrl-C, a crash, or an error after a
              completed round)
failed        ended without completing and cannot be resumed: stopped early
              (too few sites; a summary says why), or no round completed
completed     ``summary.json`` says the run completed
============  =================================================================

Besides its state, a folder may have *leftovers*: Flower processes started for it by
a coordinator that is gone (SIGKILL where no parent-death signal reached them), and a
coordinator that ended without cleaning up (``coordinator.json`` left behind).
``start``, ``resume`` and ``status`` all print :meth:`RunFolder.message`: one message
per state, naming the command that applies.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from fedvault.common.errors import ConfigError
from fedvault.common.files import lock_holder
from fedvault.common.processes import Leftover, describe, leftovers
from fedvault.server.checkpoint import CHECKPOINT_FILE
from fedvault.server.deploy import CoordinatorLayout
from fedvault.server.rundir import PROGRESS_FILE, SUMMARY_FILE


class RunState(StrEnum):
    """The state of a coordinator's run folder."""

    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"
    COMPLETED = "completed"


def read_events(path: Path) -> list[dict[str, Any]]:
    """The progress events in ``path`` ([] when there is none); a line torn by a
    crash is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event:
            found.append(event)
    return found


@dataclass(frozen=True)
class RunFolder:
    """A run folder's state and what explains it."""

    state: RunState
    run_dir: Path
    rounds_done: int
    rounds: int
    pid: int | None = None  # the running coordinator
    crashed_pid: int | None = None  # a coordinator that ended without cleaning up
    reason: str = ""  # why a stopped or failed run ended
    leftovers: tuple[Leftover, ...] = ()

    @property
    def resumable(self) -> bool:
        return self.state is RunState.STOPPED

    def message(self, config: Path | None = None) -> str:
        """One sentence: what the folder holds and the command that applies."""
        flag = f" --config {config}" if config is not None else ""
        restart = f"`fedvault server start --restart{flag}` moves it aside and starts"
        where, done = self.run_dir, f"round {self.rounds_done} of {self.rounds}"
        why = f" ({self.reason})" if self.reason else ""
        text = {
            RunState.NEW: f"{where} holds no run yet{why}; `fedvault server "
            f"start{flag}` starts one",
            RunState.RUNNING: f"a coordinator (pid {self.pid or '?'}) is running "
            f"{where}, {done}; `fedvault server stop{flag}` stops it (the run can "
            "then be resumed)",
            RunState.STOPPED: f"{where} holds an unfinished run, stopped after "
            f"{done}{why}; `fedvault server resume{flag}` continues it, {restart} "
            "over",
            RunState.FAILED: f"{where} holds a run that ended after {done} and "
            f"cannot be resumed{why}; {restart} a new run",
            RunState.COMPLETED: f"{where} holds a completed run ({self.rounds_done} "
            f"rounds, results in {where / 'output'}); {restart} a new run",
        }[self.state]
        if self.leftovers:
            text = (
                f"{describe(self.leftovers)}, left running by a coordinator that "
                f"ended without stopping them, still use {where}; "
                f"`fedvault server stop{flag}` stops them. {text}"
            )
        return text

    def refuse_unless(self, *allowed: RunState, config: Path | None) -> None:
        """Refuse a command unless the folder is in one of the ``allowed`` states
        and nothing left behind by an earlier coordinator still runs.

        Raises:
            ConfigError: with :meth:`message`.
        """
        if self.leftovers or self.state not in allowed:
            raise ConfigError(self.message(config))


def _stop_reason(events: list[dict[str, Any]]) -> str:
    for event in reversed(events):
        if event["event"] == "error":
            return f"it failed: {event.get('message')}"
        if event["event"] in ("interrupted", "stopped"):
            return str(event.get("reason") or "")
    return ""


def _crashed_pid(layout: CoordinatorLayout) -> int | None:
    """The coordinator that wrote ``coordinator.json`` and did not remove it."""
    try:
        live = json.loads(layout.live.read_text())
        return int(live["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def inspect_run(layout: CoordinatorLayout, *, rounds: int) -> RunFolder:
    """The state of the run folder ``layout`` (``rounds``: the planned rounds).

    The calling process's own lock does not count as a running coordinator.
    """
    out = layout.output
    events = read_events(out / PROGRESS_FILE)
    rounds_seen = [int(e.get("round", 0)) for e in events if e["event"] == "round"]
    done = max(rounds_seen, default=0)
    base: dict[str, Any] = {"run_dir": layout.root, "rounds": rounds}
    holder = lock_holder(layout.lock)
    if holder is not None and holder != os.getpid():
        return RunFolder(RunState.RUNNING, rounds_done=done, pid=holder, **base)
    crashed = _crashed_pid(layout)
    base |= {
        "rounds_done": done,
        "crashed_pid": crashed,
        "leftovers": tuple(leftovers(layout.flwr_home)),
    }
    crash = (
        f"the coordinator (pid {crashed}) ended without stopping it: killed or crashed"
        if crashed is not None
        else ""
    )
    summary = _summary(out / SUMMARY_FILE)
    if summary is not None:
        base["rounds_done"] = int(summary.get("rounds_completed") or done)
        if summary.get("status") == "completed":
            return RunFolder(RunState.COMPLETED, **base)
        reason = f"it stopped early: {summary.get('stop_reason')}"
        return RunFolder(RunState.FAILED, reason=reason, **base)
    checkpoint = (out / CHECKPOINT_FILE).exists()
    if not (out / PROGRESS_FILE).exists() and not checkpoint:
        return RunFolder(RunState.NEW, reason=crash, **base)
    reason = crash or _stop_reason(events)
    if checkpoint and layout.run_config_file.exists():
        return RunFolder(RunState.STOPPED, reason=reason, **base)
    reason = f"{reason}; no checkpoint" if reason else "no round completed"
    return RunFolder(RunState.FAILED, reason=reason, **base)


def _summary(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def round_states(event: dict[str, Any]) -> dict[str, str] | None:
    """Every known site's state in a ``round`` or ``stopped`` event, if it has them."""
    states = event.get("site_states" if event["event"] == "round" else "sites")
    if event["event"] not in ("round", "stopped") or not isinstance(states, dict):
        return None
    return {str(k): str(v) for k, v in states.items()}
