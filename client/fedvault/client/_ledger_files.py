"""The privacy ledger's files: paths, the advisory lock, the head, durable appends.

::

    STATE/ledger/DATASET.jsonl   one canonical JSON record per trained round
    STATE/ledger/DATASET.head    count and hash of the last record, replaced atomically,
                                 keyed: HMAC-SHA256 under the site's key
    STATE/ledger/DATASET.lock    advisory lock serialising appends
    STATE/accountant.key         the site's key (:mod:`fedvault.client._ledger_cache`)

The records' hash chain is unkeyed, so whoever may write the folder could rewrite
a record, every hash after it and the head; the head's HMAC under the site's key
(mode 0600) makes that forgery fail verification unless the key was read too.

Used by :mod:`fedvault.client.ledger`; the record format is
:mod:`fedvault.client._ledger_format`'s.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedvault.client._ledger_cache import KEY_FILE, cache_key, existing_key
from fedvault.client._ledger_format import (
    FORMAT_VERSION,
    HEX64,
    LedgerRecord,
    canonical,
    genesis,
    verify_chain,
)
from fedvault.common.errors import IntegrityError
from fedvault.common.files import fsync_dir, naming

HEAD_VERSION = 2  # 1: the head without its HMAC (older fedvault)
_HEAD_DOMAIN = b"fedvault.ledger.head.v2\n"


@dataclass(frozen=True)
class Paths:
    """The three files of one dataset's ledger."""

    dataset_id: str
    records: Path
    head: Path
    lock: Path

    @classmethod
    def of(cls, state_dir: Path, dataset_id: str) -> Paths:
        folder = state_dir / "ledger"
        return cls(
            dataset_id,
            folder / f"{dataset_id}.jsonl",
            folder / f"{dataset_id}.head",
            folder / f"{dataset_id}.lock",
        )

    def exist(self) -> bool:
        return self.records.exists() or self.head.exists()

    @property
    def state_dir(self) -> Path:
        return self.head.parent.parent


def _head_mac(key: bytes, head: dict[str, object]) -> str:
    body = {k: v for k, v in head.items() if k != "mac"}
    return hmac.new(key, _HEAD_DOMAIN + canonical(body), hashlib.sha256).hexdigest()


def write_head(paths: Paths, count: int, last: str) -> None:
    """Replace the head file atomically and durably, keyed under the site's key
    (created if the site has none yet)."""
    head: dict[str, object] = {
        "version": HEAD_VERSION,
        "dataset_id": paths.dataset_id,
        "count": count,
        "hash": last,
    }
    head["mac"] = _head_mac(cache_key(paths.state_dir), head)
    tmp = paths.head.with_suffix(".head.tmp")
    with naming(paths.head), tmp.open("wb") as handle:
        handle.write(canonical(head) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, paths.head)
    fsync_dir(paths.head.parent)


@contextmanager
def locked(paths: Paths) -> Iterator[None]:
    """Hold the ledger's advisory lock (exclusive) for the ``with`` block."""
    paths.lock.parent.mkdir(parents=True, exist_ok=True)
    with paths.lock.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def initialise(paths: Paths) -> None:
    """Create an empty ledger, unless one (or a part of one) is already there."""
    with locked(paths):
        if paths.exist():
            return
        with paths.records.open("xb") as handle:
            os.fsync(handle.fileno())
        write_head(paths, 0, genesis(paths.dataset_id))


def append_line(paths: Paths, line: bytes) -> None:
    """Append ``line`` to the records file and make it durable."""
    fd = os.open(paths.records, os.O_WRONLY | os.O_APPEND)
    try:
        with naming(paths.records):
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
    finally:
        os.close(fd)


def read_head(paths: Paths, *, keyed: bool = True) -> tuple[int, str]:
    """(count, hash of the last record) from the head file, whose HMAC must verify
    under the site's key (unless not ``keyed``: only to upgrade an older head).

    Raises:
        IntegrityError: the head is missing, edited, unkeyed, or the key is missing.
    """
    try:
        head = json.loads(paths.head.read_bytes())
        count, last = head["count"], head["hash"]
        valid = (
            head["version"] in (FORMAT_VERSION, HEAD_VERSION)
            and head["dataset_id"] == paths.dataset_id
            and isinstance(count, int)
            and count >= 0
            and isinstance(last, str)
            and bool(HEX64.fullmatch(last))
        )
    except FileNotFoundError:
        raise IntegrityError(f"{paths.head}: head file missing") from None
    except (ValueError, TypeError, KeyError):
        valid = False
    if not valid:
        raise IntegrityError(f"{paths.head}: head file unreadable or edited")
    if keyed:
        _check_mac(paths, head)
    return count, last


def _check_mac(paths: Paths, head: dict[str, object]) -> None:
    if head["version"] != HEAD_VERSION or not isinstance(head.get("mac"), str):
        raise IntegrityError(
            f"{paths.head}: head file not keyed (written by an older fedvault, or "
            "its key removed); check the ledger against your anchor, then run "
            "fedvault client ledger repair --accept-unkeyed-head"
        )
    key = existing_key(paths.state_dir)
    if key is None:
        raise IntegrityError(
            f"{paths.head}: keyed, but the site key {paths.state_dir / KEY_FILE} "
            "is missing"
        )
    if not hmac.compare_digest(_head_mac(key, head), str(head["mac"])):
        raise IntegrityError(
            f"{paths.head}: HMAC mismatch (head rewritten without the site key: "
            "a record edited and the head recomputed?)"
        )


def read_records(paths: Paths) -> bytes:
    """The records file's bytes; IntegrityError if it is missing."""
    try:
        return paths.records.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{paths.records}: ledger file missing") from None


def load(paths: Paths) -> list[LedgerRecord]:
    """Every record, after verifying the chain and the head; else IntegrityError.

    Call it under :func:`locked`, so that an append in progress is not mistaken for
    a torn line.
    """
    count, last = read_head(paths)
    data = read_records(paths)
    if data and not data.endswith(b"\n"):
        raise IntegrityError(
            f"{paths.records}: the last line is incomplete (an append was "
            "interrupted, or the file was truncated); nothing trains until it is "
            "repaired (fedvault client ledger repair)"
        )
    return verify_chain(paths.dataset_id, paths.records, data, count=count, last=last)
