"""Send messages on Flower's Grid and collect the replies, polling briskly.

Flower 1.39's ``Grid.send_and_receive`` asks the SuperLink for replies every 3 s in a
deployment (``HttpGrid``), so every message exchange waited up to 3 s after the last
site had answered: two exchanges a round, several seconds a round on a model that
trains in milliseconds. Here the coordinator asks after ``first`` seconds, then
backs off by half each time up to ``slowest`` (0.1 s): ten small local requests a
second to its own SuperLink while a long round runs, and a quick round no longer
waits on the clock.

A reply's content is uploaded after the reply itself, so a pull can find the reply
before its content; Flower then retries after 1 s, doubling up to 10 s, another
second or more per exchange. In the coordinator's ServerApp process (whose
SuperLink is on the same machine) the retries start at ``first`` and stop growing
at 0.5 s; :func:`tune_grid_pulls` checks that the Flower function it wraps is there.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

# No per-object try limit: at these intervals Flower's 500 tries would give up after
# minutes instead of Flower's ~80; its overall max_time still applies.
PULL_BACKOFF: dict[str, Any] = {
    "initial_backoff": 0.02,
    "backoff_cap": 0.5,
    "max_tries_per_object": None,
}


def tune_grid_pulls() -> None:
    """Shorten the object retries of Flower's deployment Grid (once per process)."""
    grid: Any = importlib.import_module("flwr.superlink.grid.http_grid")
    pull = getattr(grid, "pull_objects", None)
    if pull is None:
        raise RuntimeError(
            "flwr.superlink.grid.http_grid has no pull_objects: this Flower is not "
            "the one fedvault was built for (flwr 1.39)"
        )
    if not isinstance(pull, functools.partial):
        grid.pull_objects = functools.partial(pull, **PULL_BACKOFF)


def send_and_receive(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout: float | None,
    first: float = 0.02,
    slowest: float = 0.1,
) -> list[Message]:
    """Push ``messages`` and pull replies until all are in or ``timeout`` runs out.

    Same contract as ``Grid.send_and_receive``: replies in arrival order, the ones
    still missing at the deadline simply absent. A pull that ran past the
    deadline is followed by one more, so a reply that came in while it was blocked
    (on another site's half-uploaded reply) is not lost.
    """
    tune_grid_pulls()
    waiting = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    interval = first
    while waiting:
        asked = time.monotonic()
        got = list(grid.pull_messages(waiting))
        replies.extend(got)
        waiting -= {m.metadata.reply_to_message_id for m in got}
        if not waiting:
            break
        if deadline is not None and time.monotonic() >= deadline:
            if asked < deadline and waiting:
                # That pull outlasted the deadline: Flower retries a reply whose
                # content never finished uploading (a site killed mid-upload)
                # until the SuperLink drops it. Replies that came in meanwhile
                # were ready in time: take them.
                got = list(grid.pull_messages(waiting))
                replies.extend(got)
            break
        pause = interval
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - time.monotonic()))
        time.sleep(pause)
        interval = min(slowest, interval * 1.5)
    return replies
