"""A site's access log: every message it received and what it answered.

``STATE/access-log.jsonl`` (mode 0600): hash-chained, fsync'd JSON lines
(:mod:`fedvault.common.chainlog`), one per message the ClientApp handled, written by
:func:`access_log_mod` after the reply is made and before it leaves. With the
coordinator's audit log (which records the digest of every update it received,
under the same run key) it lets a site prove what left it. An entry::

    {"arrays": "sha256:…", "detail": "", "hash": "…",
     "ledger-head": {"count": 12, "hash": "…"}, "message": "train",
     "prev": "…", "reply": "trained", "round": 3, "run-id": 1234,
     "run-key": "…", "seq": 7, "time": "2026-11-30T17:00:00.123456+00:00"}

``reply`` is ``trained``, ``evaluated``, ``answered`` (a stats query, a SecAgg+
stage other than the masked update), ``declined`` (``detail``: the reason and
why) or ``error`` (``detail``: the error's reason); ``arrays`` is
:func:`fedvault.common.update_digest.update_digest` of the reply (its arrays, or
at the SecAgg+ masking stage its masked vector; ``""`` when it carries none);
``ledger-head`` is the ledger head the reply published
(:mod:`fedvault.client.published_head`; ``null`` when none). A reply that cannot
be logged does not leave: the site answers an
error instead.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
)

from fedvault.client.published_head import publish_head
from fedvault.client.site import site_settings
from fedvault.common.chainlog import ChainLog
from fedvault.common.errors import ConfigError, FedVaultError
from fedvault.common.ledger_head import LedgerHead
from fedvault.common.protocol import RUN_KEY, Decline
from fedvault.common.update_digest import MASKED_STAGE, message_round, update_digest

logger = logging.getLogger(__name__)

ACCESS_LOG = "access-log.jsonl"
VERIFY_HINT = "fedvault client access-log verify"


def access_log(state_dir: Path) -> ChainLog:
    """The access log of the site whose state folder is ``state_dir``."""
    return ChainLog(state_dir / ACCESS_LOG, label="access log", verify_hint=VERIFY_HINT)


def _state_dir(ctxt: Context) -> Path | None:
    try:
        return site_settings(ctxt.node_config, ctxt.run_config).state
    except ConfigError:
        return None


def _stage(msg: Message) -> str:
    record = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return "" if record is None else str(record.get(Key.STAGE, ""))


def received(msg: Message) -> dict[str, Any]:
    """What the access log keeps of a message as it arrived (read before the
    handlers run: the SecAgg+ masking stage replaces the message's content)."""
    stage = _stage(msg)
    return {
        "run-id": int(msg.metadata.run_id),
        "message": msg.metadata.message_type + (f" secagg:{stage}" if stage else ""),
        "round": message_round(msg),
    }


def _reply_kind(message: str, reply: Message) -> tuple[str, str]:
    if reply.has_error():
        reason = reply.error.reason or ""
        decline = Decline.from_reason(reason)
        if decline is not None:
            return "declined", f"{decline.reason}: {decline.detail}"
        return "error", reason
    decline = Decline.from_content(reply.content)
    if decline is not None:
        return "declined", f"{decline.reason}: {decline.detail}"
    masked = f"{MessageType.TRAIN} {MASKED_STAGE}"
    if message in (MessageType.TRAIN, masked):
        return "trained", ""
    if message == MessageType.EVALUATE:
        return "evaluated", ""
    return "answered", ""


def entry_fields(
    arrived: dict[str, Any], reply: Message, ctxt: Context
) -> dict[str, Any]:
    """The access log's entry for a message (as :func:`received` read it) and the
    site's reply to it."""
    kind, detail = _reply_kind(str(arrived["message"]), reply)
    return {
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "run-key": str(ctxt.run_config.get(RUN_KEY) or arrived["run-id"]),
        **arrived,
        "reply": kind,
        "detail": detail,
        "arrays": "" if reply.has_error() else update_digest(reply.content),
        "ledger-head": _head(reply),
    }


def _head(reply: Message) -> dict[str, Any] | None:
    """The ledger head the reply publishes (count and hash), or None."""
    try:
        head = None if reply.has_error() else LedgerHead.from_content(reply.content)
    except ValueError:
        return None
    return None if head is None else {"count": head.count, "hash": head.hash}


def access_log_mod(
    msg: Message, ctxt: Context, call_next: ClientAppCallable
) -> Message:
    """Answer ``msg`` through ``call_next`` and record the answer in the site's
    access log before it leaves; a site without a state folder (it takes part in
    nothing) keeps no log. A reply that cannot be logged is replaced by an error."""
    arrived = received(msg)
    reply = call_next(msg, ctxt)
    state_dir = _state_dir(ctxt)
    if state_dir is None:
        return reply
    reply = publish_head(reply, ctxt, protocol_stage=bool(_stage(msg)))
    try:
        access_log(state_dir).append(entry_fields(arrived, reply, ctxt))
    except (OSError, FedVaultError) as exc:
        logger.error("the access log cannot be written, nothing is sent: %s", exc)
        reason = f"the site's access log cannot be written: {exc}"
        return Message(
            Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg
        )
    return reply
