"""Collecting replies: all of them, or those in by the deadline."""

import time
from types import SimpleNamespace

from fedvault.server import exchange
from fedvault.server.exchange import send_and_receive


class _Grid:
    """Replies become available ``delay`` seconds after the push; one never does."""

    def __init__(self, delays: dict[str, float | None]) -> None:
        self.delays = delays
        self.pulls = 0

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        return list(messages)

    def pull_messages(self, ids):
        self.pulls += 1
        now = time.monotonic() - self.pushed_at
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
            for i in ids
            if self.delays[i] is not None and self.delays[i] <= now
        ]


def test_returns_as_soon_as_the_last_reply_is_in(monkeypatch):
    naps, sleep = [], time.sleep

    def nap(seconds):
        naps.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(exchange.time, "sleep", nap)
    grid = _Grid({"a": 0.0, "b": 0.15})
    replies = exchange.send_and_receive(grid, ["a", "b"], timeout=30)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    # never more than a tenth of a second between asks (Flower's own loop: 3 s),
    # and no ask after the last reply is in
    assert naps and max(naps) <= 0.1
    assert grid.pulls == len(naps) + 1


def test_missing_reply_is_absent_at_the_deadline():
    grid = _Grid({"a": 0.0, "b": None})
    started = time.monotonic()
    replies = send_and_receive(grid, ["a", "b"], timeout=0.4)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert 0.4 <= time.monotonic() - started < 1.0


def test_a_pull_blocked_past_the_deadline_still_collects_replies_that_came_meanwhile():
    # Flower's pull retries a killed site's half-uploaded reply ("a") until the
    # SuperLink drops it; the other site's reply ("b") arrived meanwhile.
    class _Blocking(_Grid):
        def pull_messages(self, ids):
            self.pulls += 1
            if self.pulls == 1:
                time.sleep(0.5)  # blocked on "a", then its error reply
                return [
                    SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id="a"))
                ]
            return super().pull_messages(ids)

    grid = _Blocking({"a": None, "b": 0.1})
    replies = send_and_receive(grid, ["a", "b"], timeout=0.3)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
