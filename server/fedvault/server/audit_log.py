"""The coordinator's audit log: append-only, hash-chained, fsync'd JSON lines.

One line per entry, keys sorted::

    {"args": "sha256:…", "detail": "", "hash": "…", "method": "SubmitRun",
     "outcome": "ok", "prev": "…", "role": "researcher", "seq": 7,
     "time": "2026-11-30T17:00:00.123456+00:00", "who": "alice"}

``seq`` counts from 0; ``prev`` is the previous entry's ``hash`` (64 zeros for the
first); ``hash`` is SHA-256 over the entry's other keys as canonical JSON (sorted
keys, no spaces). ``args`` is the digest of the call's request, never the request
itself. Every append holds an exclusive ``flock`` on the file and is on disk
(``fsync``) before the call's answer leaves. :func:`verify` recomputes the chain and
names the first entry that was edited, deleted, inserted or moved. A cut at the
end (the last entries deleted) leaves a valid shorter chain: compare the head
(:func:`head`) with one recorded elsewhere to catch it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedvault.common.errors import IntegrityError

GENESIS = "0" * 64
Outcome = Literal["ok", "denied", "error"]
_TAIL = 65536


def digest(data: bytes) -> str:
    """``sha256:HEX`` of a request's bytes (what the log keeps of arguments)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Head:
    """The last entry's sequence number and hash (``seq`` -1 for an empty log)."""

    seq: int
    hash: str


class AuditLog:
    """The audit log file at ``path`` (created on the first append)."""

    def __init__(self, path: Path) -> None:
        self.path = path

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            head = _head_of(handle)
            entry: dict[str, Any] = {
                "seq": head.seq + 1,
                "time": dt.datetime.now(dt.UTC).isoformat(),
                "who": who,
                "role": role,
                "method": method,
                "args": args,
                "outcome": outcome,
                "detail": detail,
                "prev": head.hash,
            }
            entry["hash"] = _entry_hash(entry)
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
        """Every entry, parsed (no chain check: see :func:`verify`)."""
        for number, line in enumerate(self.lines(), start=1):
            yield _parse(line, number)


def _parse(line: str, number: int) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        raise IntegrityError(f"audit log line {number}: not a JSON entry") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
        raise IntegrityError(f"audit log line {number}: not an audit entry")
    return entry


def _head_of(handle: Any) -> Head:
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
            "the audit log's last entry is damaged; run `fedvault server audit "
            "verify` before anything is appended"
        ) from None


def verify(path: Path) -> Head:
    """Check the whole chain; returns its head.

    Raises:
        IntegrityError: naming the first line (and ``seq``) that was edited,
            deleted, inserted or moved, or that is not an entry.
    """
    previous = Head(-1, GENESIS)
    for number, line in enumerate(AuditLog(path).lines(), start=1):
        entry = _parse(line, number)
        where = f"audit log line {number} (seq {entry.get('seq')})"
        if entry.get("seq") != previous.seq + 1:
            raise IntegrityError(
                f"{where}: expected seq {previous.seq + 1}; an entry was deleted, "
                "inserted or moved"
            )
        if entry.get("prev") != previous.hash:
            raise IntegrityError(
                f"{where}: does not chain to the entry before it; an entry was "
                "deleted, inserted or moved"
            )
        if _entry_hash(entry) != entry["hash"]:
            raise IntegrityError(f"{where}: edited (its hash does not match)")
        previous = Head(previous.seq + 1, entry["hash"])
    return previous
