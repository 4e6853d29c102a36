"""The site's own record of what it answered the coordinator, message by message.

:func:`answers_mod` wraps every message the ClientApp handles (outermost, so it sees
the site's final answer) and, on a deployed site, appends one JSON line to
``STATE/answers.jsonl`` and one line to the site's log (``supernode.log``): the
round, the message, the answer (``trained`` with the epsilon spent so far,
``declined`` with the site's reason, ``failed`` with the error, ``summary sent``,
``evaluated``, or a notice from the coordinator such as "not in this run"), the
run and the time. ``fedvault client start`` echoes these lines as they come and
``fedvault client status`` reads them (:mod:`fedvault.client.site_status`).

A coordinator notice (:data:`~fedvault.common.protocol.NOTICE_MESSAGE`) is
answered here, empty: the site only records it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedvault.client.site import site_settings
from fedvault.client.site_status import ANSWERS_FILE, describe
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import FedVaultError
from fedvault.common.protocol import (
    CONFIG,
    METRICS,
    NOTICE,
    NOTICE_MESSAGE,
    RUN_FEDVAULT_VERSION,
    RUN_KEY,
    SERVER_ROUND,
    STATS_MESSAGE,
    Decline,
    SiteStats,
    TrainMetrics,
)

logger = logging.getLogger("fedvault.site")


def _logger() -> logging.Logger:
    """The site's log: lines go to stderr, which the launcher writes to
    ``supernode.log`` (Flower configures only its own logger)."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s fedvault site: %(message)s")
        )
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def answers_mod(
    msg: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """Record the site's answer to ``msg`` (see the module); answer notices."""
    state = context.node_config.get("state")
    if state:
        _logger()  # before the message runs: training's notes go to the site log
    if msg.metadata.message_type == NOTICE_MESSAGE:
        record = msg.content.config_records.get(NOTICE)
        text = str(record.get("text", "")) if record is not None else ""
        _note(state, context, msg, {"answer": "notice", "reason": text})
        return Message(RecordDict(), reply_to=msg)
    mismatch = version_mismatch(str(context.run_config.get(RUN_FEDVAULT_VERSION, "")))
    if mismatch is not None and msg.metadata.message_type == STATS_MESSAGE:
        name = site_settings(context.node_config, context.run_config).name
        _note(state, context, msg, {"answer": "declined", "reason": mismatch.detail})
        stats = SiteStats(name, decline=mismatch)
        return Message(stats.to_content(), reply_to=msg)
    try:
        reply = call_next(msg, context)
    except Exception as exc:
        _note(state, context, msg, {"answer": "failed", "reason": _error(exc)})
        raise
    entry = _answer(msg, reply, context)
    if entry is not None:
        _note(state, context, msg, entry)
    return reply


def version_mismatch(coordinator: str, site: str | None = None) -> Decline | None:
    """A ``policy`` decline when the coordinator's fedvault version (from the run
    config; empty: an older coordinator, not checked) differs from this site's in
    major.minor: the wire protocol may differ between them."""
    site = site or version("fedvault")
    if not coordinator or coordinator.split(".")[:2] == site.split(".")[:2]:
        return None
    return Decline(
        "policy",
        f"the coordinator runs fedvault {coordinator}, this site {site}: "
        "major.minor must match (compare `fedvault --version`; upgrade one side)",
    )


def notice(msg: Message, context: Context) -> Message:
    """The ClientApp's handler of a coordinator notice (:func:`answers_mod` records
    it first): an empty answer."""
    return Message(RecordDict(), reply_to=msg)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _answer(msg: Message, reply: Message, context: Context) -> dict[str, Any] | None:
    """What the reply says, or None for a message in between (a SecAgg+ stage)."""
    if reply.has_error():
        reason = reply.error.reason or ""
        decline = Decline.from_reason(reason)
        if decline is not None:
            return {
                "answer": "declined",
                "reason": f"{decline.reason}: {decline.detail}",
            }
        lines = [ln for ln in reason.splitlines() if ln.strip()] or ["unknown error"]
        return {"answer": "failed", "reason": lines[-1].strip()[:300]}
    decline = Decline.from_content(reply.content)
    if decline is not None:
        return {"answer": "declined", "reason": f"{decline.reason}: {decline.detail}"}
    kind = msg.metadata.message_type
    if kind == STATS_MESSAGE:
        try:
            stats = SiteStats.from_content(reply.content)
        except ValueError as exc:
            return {"answer": "failed", "reason": str(exc)}
        if stats.summary is not None:
            return {"answer": "summary sent"}
        if stats.decline is not None:
            d = stats.decline
            return {"answer": "declined", "reason": f"{d.reason}: {d.detail}"}
        return {"answer": "cannot take part", "reason": stats.reason or ""}
    metrics = reply.content.metric_records.get(METRICS)
    if metrics is None:
        return None
    if kind != "train":
        return {"answer": "evaluated"}
    entry: dict[str, Any] = {"answer": "trained"}
    try:
        dp = TrainingConfig.from_run_config(context.run_config).dp
        figures = TrainMetrics.from_record(metrics, dp=dp).dp
    except (FedVaultError, ValueError):
        figures = None
    if figures is not None:
        entry |= {
            "epsilon": figures.epsilon,
            "epsilon-lifetime": figures.epsilon_lifetime,
            "epsilon-budget": figures.epsilon_budget,
        }
    return entry


def _round(msg: Message) -> int | None:
    record = msg.content.config_records.get(CONFIG)
    value = None if record is None else record.get(SERVER_ROUND)
    return int(value) if isinstance(value, int | float) else None


def _note(state: object, context: Context, msg: Message, entry: dict[str, Any]) -> None:
    """Append ``entry`` to the site's answers and log it (deployed sites only)."""
    if not state:
        return
    kind = msg.metadata.message_type
    entry = {
        "time": time.time(),
        "run": str(context.run_config.get(RUN_KEY) or context.run_id),
        "round": _round(msg),
        "message": kind.removeprefix("query."),
    } | entry
    _logger().info("%s", describe(entry))
    try:
        with (Path(str(state)) / ANSWERS_FILE).open("a") as out:
            out.write(json.dumps(entry) + "\n")
    except OSError as exc:
        _logger().warning("cannot record the answer: %s", exc)
