"""Append-only, hash-chained, fsync'd JSON-lines logs (the coordinator's audit log,
a site's access log).

One entry per line, keys sorted; every entry holds ``seq`` (0, 1, 2, ...), ``prev``
(the previous entry's ``hash``, 64 zeros for the first) and ``hash`` (SHA-256 of
the entry's other keys as canonical JSON: sorted keys, no spaces). Every append
holds an exclusive ``flock`` on the file (mode 0600) and is on disk (``fsync``)
before it returns. :func:`verify_chain` recomputes the chain and names the first
line that was edited, deleted, inserted or moved. A cut at the end leaves a valid
shorter chain: compare the head with one recorded elsewhere to catch it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvault.common.errors import IntegrityError

GENESIS = "0" * 64
_TAIL = 65536


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of an entry's keys other than ``hash``, as canonical JSON."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Head:
    """The last entry's sequence number and hash (``seq`` -1 for an empty log)."""

    seq: int
    hash: str


class ChainLog:
    """The chained log file at ``path`` (created, 0600, on the first append);
    ``label`` names it in errors ("audit log"), ``verify_hint`` is the command that
    checks it."""

    def __init__(self, path: Path, *, label: str, verify_hint: str) -> None:
        self.path, self.label, self.verify_hint = path, label, verify_hint

    def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Append ``fields`` as one entry (``seq``, ``prev``, ``hash`` added) and
        fsync it; returns the entry as written.

        Raises:
            OSError: the log could not be written.
            IntegrityError: the last entry on disk is not a valid entry.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            head = self._head_of(handle)
            entry: dict[str, Any] = {"seq": head.seq + 1, **fields, "prev": head.hash}
            entry["hash"] = entry_hash(entry)
            handle.write((json.dumps(entry, sort_keys=True) + "\n").encode())
            handle.flush()
            os.fsync(handle.fileno())
        return entry

    def lines(self, start: int = 0, limit: int = 0) -> list[str]:
        """The stored lines from entry ``start``, at most ``limit`` (0: all)."""
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8", errors="replace")
        chosen = text.splitlines()[start:]
        return chosen[:limit] if limit else chosen

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every entry, parsed (no chain check: see :meth:`verify`).

        Raises:
            IntegrityError: a line is not an entry.
        """
        for number, line in enumerate(self.lines(), start=1):
            yield self._parse(line, number)

    def _parse(self, line: str, number: int) -> dict[str, Any]:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise IntegrityError(
                f"{self.label} line {number}: not a JSON entry"
            ) from None
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
            raise IntegrityError(f"{self.label} line {number}: not an entry")
        return entry

    def _head_of(self, handle: Any) -> Head:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return Head(-1, GENESIS)
        handle.seek(max(0, size - _TAIL))
        tail = handle.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            entry = json.loads(tail)
            return Head(int(entry["seq"]), str(entry["hash"]))
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(
                f"the {self.label}'s last entry is damaged; run `{self.verify_hint}` "
                "before anything is appended"
            ) from None

    def verify(self) -> Head:
        """Check the whole chain; returns its head.

        Raises:
            IntegrityError: naming the first line (and ``seq``) that was edited,
                deleted, inserted or moved, or that is not an entry.
        """
        previous = Head(-1, GENESIS)
        for number, line in enumerate(self.lines(), start=1):
            entry = self._parse(line, number)
            where = f"{self.label} line {number} (seq {entry.get('seq')})"
            if entry.get("seq") != previous.seq + 1:
                raise IntegrityError(
                    f"{where}: expected seq {previous.seq + 1}; an entry was "
                    "deleted, inserted or moved"
                )
            if entry.get("prev") != previous.hash:
                raise IntegrityError(
                    f"{where}: does not chain to the entry before it; an entry was "
                    "deleted, inserted or moved"
                )
            if entry_hash(entry) != entry["hash"]:
                raise IntegrityError(f"{where}: edited (its hash does not match)")
            previous = Head(previous.seq + 1, entry["hash"])
        return previous
