"""Sites that hold a run for their operator's approval (a site's ``[approval]
hold = true``): the coordinator asks them again for their summary until they
answer otherwise or its wait for sites ends."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flwr.app import Message, RecordDict

from fedvault.common.protocol import HELD_PREFIX, STATS_MESSAGE, SiteStats

logger = logging.getLogger(__name__)

HELD_PAUSE = 3.0  # seconds between two stats queries to a site holding the run


def held(reply: Message) -> bool:
    """Whether a stats reply is a site holding the run for its operator."""
    if reply.has_error():
        return False
    try:
        decline = SiteStats.from_content(reply.content).decline
    except ValueError:
        return False
    return decline is not None and decline.detail.startswith(HELD_PREFIX)


def until_answered(
    node_of: Callable[[Message], int],
    exchange: Callable[[list[Message]], list[Message]],
    messages: list[Message],
    *,
    deadline: float,
    pause: float | None = None,
) -> list[Message]:
    """The stats replies of every site asked; a site that holds the run for its
    operator's approval (a ``held:`` decline) is asked again every ``pause``
    seconds until it answers otherwise or ``deadline`` (:func:`time.monotonic`)
    passes, when its held decline stands (``pause``: :data:`HELD_PAUSE` unless
    given). ``node_of``: the node a reply answers for; ``exchange``: sends
    messages and returns their replies."""
    pause = HELD_PAUSE if pause is None else pause
    replies = exchange(messages)
    while waiting := {node_of(r): r for r in replies if held(r)}:
        if time.monotonic() + pause > deadline:
            break
        logger.info(
            "node(s) %s hold the run for their operator's approval; asking again "
            "in %g s",
            ", ".join(map(str, sorted(waiting))),
            pause,
        )
        time.sleep(pause)
        again = exchange(
            [
                Message(RecordDict(), message_type=STATS_MESSAGE, dst_node_id=node)
                for node in waiting
            ]
        )
        waiting |= {node_of(r): r for r in again}
        replies = [r for r in replies if not held(r)] + list(waiting.values())
    return replies
