"""The coordinator's audit log: append-only, hash-chained, fsync'd JSON lines.

One line per entry, keys sorted::

    {"args": "sha256:…", "detail": "", "hash": "…", "method": "SubmitRun",
     "outcome": "ok", "prev": "…", "role": "researcher", "seq": 7,
     "time": "2026-11-30T17:00:00.123456+00:00", "who": "alice"}

``seq`` counts from 0; ``prev`` is the previous entry's ``hash`` (64 zeros for the
first); ``hash`` is SHA-256 over the entry's other keys as canonical JSON (sorted
keys, no spaces). ``args`` is the digest of the call's request, never the request
itself. The chain is :mod:`fedvault.common.chainlog`'s: every append holds an
exclusive ``flock`` on the file and is on disk (``fsync``) before the call's answer
leaves. :func:`verify` recomputes the chain and
names the first entry that was edited, deleted, inserted or moved. A cut at the
end (the last entries deleted) leaves a valid shorter chain: compare the head
(:func:`head`) with one recorded elsewhere to catch it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from fedvault.common.chainlog import GENESIS, ChainLog, Head

__all__ = ["GENESIS", "AuditLog", "Head", "Outcome", "digest", "verify"]

Outcome = Literal["ok", "denied", "error"]
_VERIFY = "fedvault server audit verify"


def digest(data: bytes) -> str:
    """``sha256:HEX`` of a request's bytes (what the log keeps of arguments)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class AuditLog:
    """The audit log file at ``path`` (created on the first append)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._chain = ChainLog(path, label="audit log", verify_hint=_VERIFY)

    def append(
        self,
        *,
        who: str,
        role: str,
        method: str,
        args: str,
        outcome: Outcome,
        detail: str = "",
    ) -> dict[str, Any]:
        """Append one entry and fsync it; returns the entry as written.

        Raises:
            OSError: the log could not be written (the call must then fail).
            IntegrityError: the last entry on disk is not a valid entry.
        """
        return self._chain.append(
            {
                "time": dt.datetime.now(dt.UTC).isoformat(),
                "who": who,
                "role": role,
                "method": method,
                "args": args,
                "outcome": outcome,
                "detail": detail,
            }
        )

    def lines(self, start: int = 0, limit: int = 0) -> list[str]:
        """The stored lines from entry ``start``, at most ``limit`` (0: all)."""
        return self._chain.lines(start, limit)

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every entry, parsed (no chain check: see :func:`verify`)."""
        return self._chain.entries()


def verify(path: Path) -> Head:
    """Check the whole chain; returns its head.

    Raises:
        IntegrityError: naming the first line (and ``seq``) that was edited,
            deleted, inserted or moved, or that is not an entry.
    """
    return AuditLog(path)._chain.verify()
