"""What ``fedvault client start`` prints while the site runs: its connection to the
coordinator (from Flower's log) and every answer it gives (from its answers file).

Flower's SuperNode retries an unreachable coordinator with backoff, for
``max-retries`` attempts and ``max-wait-time`` seconds per outage (0: no limit);
each retry is echoed with the limit that applies, so that a silent wait never
happens.
"""

from __future__ import annotations

import re
from typing import IO

from fedvault.client.site_config import SiteConfig
from fedvault.client.site_status import describe, read_answers
from fedvault.common.flower_logs import plain

_RETRY = re.compile(r"Connection attempt failed, retrying in ([\d.]+) seconds")
_CONNECTED = re.compile(r"Connection successful after ([\d.]+) seconds")
_GAVE_UP = re.compile(r"Giving up reconnection after ([\d.]+) seconds and (\d+) tries")
_NODE = re.compile(r"SuperNode ID: (\d+)")


class SiteEcho:
    """Tails the site's log and answers from where they are when created."""

    def __init__(self, cfg: SiteConfig, out: IO[str]) -> None:
        self.cfg, self.out = cfg, out
        self.name = cfg.options.name
        log = cfg.log
        self._log_at = log.stat().st_size if log.exists() else 0
        self._answers_at = read_answers(cfg.state_dir, offset=0)[1]

    def poll(self) -> None:
        """Print what happened since the last call."""
        for line in self._new_log_lines():
            said = self._connection(line)
            if said is not None:
                self._say(said)
        entries, self._answers_at = read_answers(
            self.cfg.state_dir, offset=self._answers_at
        )
        for entry in entries:
            self._say(describe(entry))

    def _say(self, text: str) -> None:
        self.out.write(f"site {self.name}: {text}\n")
        self.out.flush()

    def _new_log_lines(self) -> list[str]:
        try:
            with self.cfg.log.open("rb") as f:
                if f.seek(0, 2) < self._log_at:  # rotated: a new file
                    self._log_at = 0
                f.seek(self._log_at)
                data = f.read()
        except OSError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self._log_at += len(complete)
        return plain(complete.decode(errors="replace")).splitlines()

    def _connection(self, line: str) -> str | None:
        opts = self.cfg.options
        if m := _RETRY.search(line):
            return (
                f"cannot reach the coordinator at {opts.coordinator}; trying again "
                f"in {float(m[1]):.1f} s ({self.limit()})"
            )
        if m := _CONNECTED.search(line):
            return f"reached the coordinator after {float(m[1]):.0f} s"
        if m := _GAVE_UP.search(line):
            return (
                f"stopped trying to reach the coordinator after {float(m[1]):.0f} s "
                f"and {m[2]} tries"
            )
        if m := _NODE.search(line):
            return f"the coordinator accepted this site (node {m[1]}); waiting for work"
        return None

    def limit(self) -> str:
        """The retry limits in force, in words, naming their keys."""
        opts = self.cfg.options
        limits = []
        if opts.max_wait_time:
            limits.append(f"gives up after max-wait-time = {opts.max_wait_time:g} s")
        if opts.max_retries:
            limits.append(f"after max-retries = {opts.max_retries} attempts")
        if not limits:
            return "retries without limit: max-wait-time = 0 and max-retries = 0"
        return " or ".join(limits)
