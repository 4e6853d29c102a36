"""What the coordinator received: the digest of every training reply, per round
and site (``received.jsonl`` in the run's output folder), and the ledger heads the
sites published (``ledger-heads.jsonl``).

The ServerApp's grid is wrapped in :class:`RecordingGrid`, which sees every
message pushed and every reply pulled (plain rounds through ``push_messages`` /
``pull_messages``, SecAgg+ rounds through ``send_and_receive``) and appends, for
each reply to a training message, one JSON line::

    {"arrays": "sha256:…", "message": "train", "node": 123, "round": 3,
     "run-key": "…", "site": "hospital-a"}

``arrays`` is :func:`fedvault.common.update_digest.update_digest` of the reply (its
arrays, or in a SecAgg+ round the site's masked vector, ``message`` then
``train secagg:collect_masked_vectors``), the same digest the site's access log
holds for what it sent.

Every reply that publishes its site's ledger head
(:mod:`fedvault.common.ledger_head`) adds a line to ``ledger-heads.jsonl`` when the
head differs from that node's previous one::

    {"head": {"count": 7, "dataset_id": "icu-2024", "epsilon": 1.2, "hash": "…",
     "time": "…"}, "message": "evaluate", "node": 123, "round": 3,
     "run-key": "…", "site": "hospital-a"}

``head`` is the site's anchor as ``fedvault client ledger anchor`` prints it. When
a run submitted to the coordinator service ends, the service appends each update
line to the audit log (``UpdateReceived``), then each site's last head
(``LedgerHead``, :func:`audit_received`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.app.message_type import MessageType
from flwr.serverapp import Grid

from fedvault.common.protocol import STATS_MESSAGE, LedgerHead, SiteStats
from fedvault.common.update_digest import (
    MASKED_STAGE,
    arrays_digest,
    masked_vector_digest,
    message_round,
)
from fedvault.server.audit_log import AuditLog, digest

logger = logging.getLogger(__name__)

RECEIVED_FILE = "received.jsonl"
HEADS_FILE = "ledger-heads.jsonl"


class RecordingGrid:
    """``grid``, with the digest of every training reply appended to
    ``out_dir/received.jsonl`` (0600) as it arrives."""

    def __init__(self, grid: Grid, out_dir: Path, run_key: str) -> None:
        self._grid, self._file, self._run_key = grid, out_dir / RECEIVED_FILE, run_key
        self._sent: dict[str, tuple[str, int | None]] = {}
        self._names: dict[int, str] = {}
        self._round: int | None = None
        self._heads: dict[int, tuple[int, str]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push through the grid, remembering each message's kind and round."""
        sent = list(messages)
        ids = list(self._grid.push_messages(sent))
        for message in sent:
            self._remember(message)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull through the grid, recording each training reply."""
        replies = list(self._grid.pull_messages(message_ids))
        self._record(replies)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's exchange (SecAgg+ rounds use it), recording training replies."""
        sent = list(messages)
        replies = list(self._grid.send_and_receive(sent, timeout=timeout))
        for message in sent:
            self._remember(message)
        self._record(replies)
        return replies

    def _remember(self, message: Message) -> None:
        server_round = message_round(message)
        if server_round is not None:
            self._round = server_round  # SecAgg+ stages after the first carry none
        kind = message.metadata.message_type
        self._sent[message.metadata.message_id] = (kind, server_round or self._round)

    def _record(self, replies: list[Message]) -> None:
        lines = []
        for reply in replies:
            node = reply.metadata.src_node_id
            kind, server_round = self._sent.get(
                reply.metadata.reply_to_message_id, (reply.metadata.message_type, None)
            )
            if kind == STATS_MESSAGE and not reply.has_error():
                with contextlib.suppress(ValueError):  # the federation reports it
                    self._names[node] = SiteStats.from_content(reply.content).name
            self._head(reply, kind, server_round)
            if kind != MessageType.TRAIN or reply.has_error():
                continue
            arrays = arrays_digest(reply.content)
            masked = not arrays
            arrays = arrays or masked_vector_digest(reply.content)
            if not arrays:
                continue  # a decline, a SecAgg+ stage other than masking
            line = {
                "run-key": self._run_key,
                "round": server_round,
                "node": node,
                "site": self._names.get(node, f"node-{node}"),
                "message": f"{kind} {MASKED_STAGE}" if masked else kind,
                "arrays": arrays,
            }
            lines.append(json.dumps(line, sort_keys=True) + "\n")
        if lines:
            self._append(self._file, "".join(lines))

    def _head(self, reply: Message, kind: str, server_round: int | None) -> None:
        """Append the ledger head ``reply`` publishes, when it differs from the
        last one of its node (a malformed head is logged and skipped)."""
        if reply.has_error():
            return
        node = reply.metadata.src_node_id
        try:
            head = LedgerHead.from_content(reply.content)
        except ValueError as exc:
            logger.warning("node %s: ledger head ignored: %s", node, exc)
            return
        if head is None or self._heads.get(node) == (head.count, head.hash):
            return
        self._heads[node] = (head.count, head.hash)
        line = {
            "run-key": self._run_key,
            "round": server_round,
            "node": node,
            "site": self._names.get(node, f"node-{node}"),
            "message": kind,
            "head": head.anchor(),
        }
        text = json.dumps(line, sort_keys=True) + "\n"
        self._append(self._file.with_name(HEADS_FILE), text)

    @staticmethod
    def _append(path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def read_received(out_dir: Path) -> Iterator[dict[str, Any]]:
    """The lines of ``out_dir/received.jsonl`` (none if there is no file); a line
    that is not JSON (a torn last write) is skipped."""
    return _lines(out_dir / RECEIVED_FILE)


def read_heads(out_dir: Path) -> Iterator[dict[str, Any]]:
    """The lines of ``out_dir/ledger-heads.jsonl``, as :func:`read_received`."""
    return _lines(out_dir / HEADS_FILE)


def last_heads(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Each site's last published ledger head in the run (its line), by site."""
    return {entry.get("site", "?"): entry for entry in read_heads(out_dir)}


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            yield entry


def audit_received(audit: AuditLog, out_dir: Path, *, run_id: str, who: str) -> int:
    """Append one ``UpdateReceived`` entry per received update, then one
    ``LedgerHead`` entry per site: the last ledger head it published in the run.
    Returns how many entries were appended.

    Raises:
        OSError: the audit log could not be written.
        IntegrityError: the audit log's last entry is damaged.
    """
    count = 0
    for entry in read_received(out_dir):
        _append(
            audit,
            who,
            "UpdateReceived",
            entry,
            f"run {run_id} run-key {entry.get('run-key')} round "
            f"{entry.get('round')} site {entry.get('site')} arrays "
            f"{entry.get('arrays')}",
        )
        count += 1
    for site, entry in sorted(last_heads(out_dir).items()):
        head = entry.get("head") or {}
        _append(
            audit,
            who,
            "LedgerHead",
            entry,
            f"run {run_id} run-key {entry.get('run-key')} site {site} dataset "
            f"{head.get('dataset_id')} count {head.get('count')} hash "
            f"{head.get('hash')} epsilon {head.get('epsilon')} time {head.get('time')}",
        )
        count += 1
    return count


def _append(
    audit: AuditLog, who: str, method: str, entry: dict[str, Any], detail: str
) -> None:
    audit.append(
        who=who,
        role="coordinator",
        method=method,
        args=digest(json.dumps(entry, sort_keys=True).encode()),
        outcome="ok",
        detail=detail,
    )
