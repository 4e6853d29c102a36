"""A loopback HTTP health endpoint for monitoring a running coordinator.

With ``health-address`` set in ``coordinator.toml``, ``fedvault server start`` /
``resume`` answer ``GET /health`` on that (loopback) address with the run folder's
state as JSON: ``state`` (``running`` while the run goes on), ``message``,
``round``, ``rounds``, and ``sites``: every known site's state in the last round.
Status 200 while the run is running, 503 otherwise. No request is logged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fedvault.common.errors import ConfigError
from fedvault.common.net import split_address
from fedvault.server.deploy import CoordinatorLayout, check_loopback
from fedvault.server.rundir import PROGRESS_FILE
from fedvault.server.runstate import RunState, inspect_run, read_events

State = Callable[[], dict[str, Any]]


def health_doc(layout: CoordinatorLayout, *, rounds: int) -> dict[str, Any]:
    """The run folder's state, round and every known site's last round state."""
    folder = inspect_run(layout, rounds=rounds)
    last: dict[str, Any] = {}
    for event in read_events(layout.output / PROGRESS_FILE):
        if event.get("event") == "round":
            last = event.get("site_states") or last
    return {
        "state": folder.state.value,
        "message": folder.message(),
        "round": folder.rounds_done,
        "rounds": rounds,
        "sites": last,
    }


class _Handler(BaseHTTPRequestHandler):
    state: State

    def do_GET(self) -> None:
        if self.path.split("?")[0].rstrip("/") != "/health":
            self.send_error(404, "only /health is served")
            return
        doc = type(self).state()
        body = (json.dumps(doc, indent=2) + "\n").encode()
        self.send_response(200 if doc["state"] == RunState.RUNNING.value else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access lines."""


class HealthServer:
    """The endpoint on a daemon thread; :meth:`close` stops it."""

    def __init__(self, address: str, state: State) -> None:
        """Bind ``address``.

        Raises:
            ConfigError: the address is not loopback, or cannot be bound.
        """
        check_loopback(address)
        host, port = split_address(address, key="health-address")
        handler = type("Handler", (_Handler,), {"state": staticmethod(state)})
        try:
            self.server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"health-address: cannot listen on {address} ({exc.strerror})"
            ) from None
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
