"""A run's live view, folded from its progress events: rounds, each site's state,
the epsilon each site spent, its declines and failures.

The same events feed ``fedvault server status --watch`` (a ``server start`` run
folder's ``progress.jsonl``, or the coordinator service's ``WatchRun`` stream) and
the Prometheus metrics (:mod:`fedvault.server.metrics`). Nothing here reads the
data or changes the run: the events are what the ServerApp already wrote.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

# A site's state (fedvault.server.sites.round_states) -> its kind, by prefix.
_KINDS = (
    ("trained", "trained"),
    ("declined", "declined"),
    ("failed", "failed"),
    ("dropped out", "failed"),
    ("rejected", "rejected"),
    ("not sampled", "not_sampled"),
    ("not connected", "not_connected"),
    ("excluded", "excluded"),
    ("not in this run", "next_run"),
    ("ready", "ready"),
)
KINDS = tuple(dict.fromkeys(kind for _, kind in _KINDS))
_DECLINE = re.compile(r"declined:? \(?([A-Za-z][\w-]*)")
_ENDS = {"done", "error", "interrupted"}


def state_kind(state: str) -> str:
    """``trained``, ``declined``, ``failed``, ``rejected``, ``not_sampled``,
    ``not_connected``, ``excluded``, ``next_run``, ``ready`` or ``other``."""
    for prefix, kind in _KINDS:
        if state.startswith(prefix):
            return kind
    return "other"


def decline_reason(state: str) -> str | None:
    """The decline's reason code (``budget``, ``policy``, ...) if ``state`` (or
    the exclusion it is) is a decline."""
    found = _DECLINE.search(state)
    return found.group(1) if found else None


def failure_reason(state: str) -> str | None:
    """``no-reply``, ``error`` or ``rejected`` if ``state`` is a failure."""
    body = state.removeprefix("excluded: ")
    if body.startswith("rejected"):
        return "rejected"
    if body.startswith(("failed", "dropped out", "malformed")):
        return "no-reply" if "no reply" in body else "error"
    return None


@dataclass
class SiteView:
    """One site in a run: its last state, epsilon spent, declines and failures."""

    state: str = "-"
    epsilon: float | None = None
    rounds_trained: int = 0
    declines: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    def note(self, state: str) -> None:
        """The site's state in one round (or its exclusion from the run, which
        every round repeats: counted once)."""
        if state == self.state and state.startswith("excluded"):
            return
        self.state = state
        declined = decline_reason(state)
        if declined is not None:
            self.declines[declined] += 1
            return
        failed = failure_reason(state)
        if failed is not None:
            self.failures[failed] += 1


@dataclass
class RunView:
    """A run as its events tell it so far."""

    run: str
    rounds: int | None = None
    round: int = 0
    status: str = "waiting for the coordinator"
    reason: str = ""
    ended: bool = False
    sites: dict[str, SiteView] = field(default_factory=dict)

    def site(self, name: str) -> SiteView:
        return self.sites.setdefault(name, SiteView())

    def as_dict(self) -> dict[str, Any]:
        """The view as JSON (``status --watch --format json`` prints one a line)."""
        return {
            "run": self.run,
            "status": self.status,
            "round": self.round,
            "rounds": self.rounds,
            "reason": self.reason,
            "ended": self.ended,
            "sites": {
                name: {
                    "state": s.state,
                    "epsilon_spent": s.epsilon,
                    "rounds_trained": s.rounds_trained,
                    "declines": dict(s.declines),
                    "failures": dict(s.failures),
                }
                for name, s in sorted(self.sites.items())
            },
        }


def fold(events: Iterable[dict[str, Any]], *, run: str) -> RunView:
    """The view of run ``run`` after ``events`` (``progress.jsonl``'s, in order)."""
    view = RunView(run)
    for event in events:
        _apply(view, event)
    return view


def _apply(view: RunView, event: dict[str, Any]) -> None:
    kind = event.get("event")
    if kind == "start":
        view.rounds, view.status = event.get("rounds"), "waiting for sites"
    elif kind == "ready":
        view.status = "running"
        for name in event.get("sites") or []:
            view.site(str(name)).state = "ready"
        for name, why in (event.get("excluded") or {}).items():
            view.site(str(name)).note(f"excluded: {why}")
    elif kind == "round":
        _round(view, event)
    elif kind == "stopped":
        view.reason = str(event.get("reason") or "")
        for name, state in (event.get("sites") or {}).items():
            view.site(str(name)).note(str(state))
    elif kind == "resumed":
        view.status = "running"
    elif kind in _ENDS:
        view.ended = True
        view.status = {"done": str(event.get("status")), "error": "failed"}.get(
            str(kind), "interrupted"
        )
        why = event.get("reason") or event.get("message") or view.reason
        view.reason = str(why or "")


def _round(view: RunView, event: dict[str, Any]) -> None:
    view.round = max(view.round, int(event.get("round", 0)))
    for name, state in (event.get("site_states") or {}).items():
        view.site(str(name)).note(str(state))
    for name, record in (event.get("sites") or {}).items():
        if isinstance(record, dict):
            site = view.site(str(name))
            site.epsilon = record.get("epsilon_spent")
            site.rounds_trained = int(record.get("rounds_trained") or 0)


def render(view: RunView) -> Table:
    """The view as a rich table: one row per site."""
    done = f"round {view.round}/{view.rounds if view.rounds is not None else '?'}"
    why = f" ({view.reason})" if view.reason else ""
    table = Table(title=f"run {view.run}: {view.status}, {done}{why}")
    for col in ("site", "state", "epsilon spent", "rounds trained", "declines",
                "failures"):  # fmt: skip
        table.add_column(col)
    for name, site in sorted(view.sites.items()):
        table.add_row(
            name,
            site.state,
            "-" if site.epsilon is None else f"{site.epsilon:.4g}",
            str(site.rounds_trained),
            _counts(site.declines),
            _counts(site.failures),
        )
    return table


def _counts(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"
