"""The coordinator's book of sites: who each node is, and what each round got from it.

:class:`SiteBook` keeps the per-site bookkeeping out of the round loop
(:mod:`fedvault.server.federation`): it files every reply under the site that was
asked (a reply Flower writes itself, e.g. for a site that died, comes from the
SuperLink, not from the site), sorts replies into usable ones and declines,
failures or rejections, and keeps each site's privacy figures as reported.

After every training round :meth:`SiteBook.round_states` gives each site the
coordinator knows (those in the run, those excluded from it, and every site of a
deployed coordinator's registry) one state: ``trained``, ``declined: ...``,
``failed: ...``, ``rejected: ...``, ``not sampled``, ``not connected``,
``excluded: ...`` or :data:`NEXT_RUN` (connected, but not in this run).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedvault.common.config import TrainingConfig
from fedvault.common.errors import ConfigError, FederationError
from fedvault.common.protocol import (
    ARRAYS,
    METRICS,
    MISMATCH_PREFIX,
    NOTICE,
    NOTICE_MESSAGE,
    Decline,
    SiteStats,
    TrainMetrics,
)
from fedvault.common.records import array_record, metric_record
from fedvault.common.wire import summary_from_bytes
from fedvault.server.checks import (
    check_reply,
    expected_metrics,
    norm_bound,
    update_norm,
)
from fedvault.server.exchange import send_and_receive
from fedvault.server.held_sites import until_answered
from fedvault.server.registry import SiteRegistry
from fedvault.server.report import SiteRecord

logger = logging.getLogger(__name__)

TRAINED = "trained"
NOT_SAMPLED = "not sampled"
NOT_CONNECTED = "not connected"
NO_REPLY = "failed: no reply within round-timeout"
NEXT_RUN = (
    "not in this run: it was not connected when the run started (or was "
    "registered later); it takes part in the coordinator's next run"
)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)\b:?.*)$")


def one_line(reason: str, limit: int = 300) -> str:
    """A site's failure as one line: its error's class and message.

    Flower hands the coordinator a ClientApp's failure as a traceback (in
    simulation wrapped by Ray, with colour codes); the last line naming an error
    is what the site's operator and the coordinator need. Colour codes go.
    """
    lines = [ln.strip() for ln in _ANSI.sub("", reason).splitlines() if ln.strip()]
    errors = [ln for ln in lines if _ERROR_LINE.match(ln)]
    line = (errors or lines or ["unknown failure"])[-1]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _registered(path: Path | None) -> dict[str, int | None]:
    """A deployed coordinator's registered sites, name to node id ({} without)."""
    if path is None or not path.exists():
        return {}
    try:
        return {e.name: e.node_id for e in SiteRegistry(path).sites.values()}
    except ConfigError as exc:
        logger.warning("%s", exc)
        return {}


class SiteBook:
    """What the coordinator knows of each site (by Flower node id) in one run."""

    def __init__(self, training: TrainingConfig, excluded: dict[str, str]) -> None:
        self.training = training
        self.sites: dict[int, SiteRecord] = {}
        self.excluded: dict[str, str] = dict(excluded)
        self._sent: dict[str, int] = {}
        self.present: set[int] = set()  # nodes asked for their summary at the start
        self._sampled: set[int] = set()  # nodes asked to train this round
        self._answers: dict[int, str] = {}  # this round's answer of each node
        self._notified: set[int] = set()
        self.last_states: dict[str, str] = {}  # of the last training round
        self._last_round = 0

    # -- where replies come from --------------------------------------------------
    def remember(self, sent: Iterable[Message]) -> None:
        """Note where each pushed message went (its id is set by the Grid)."""
        self._sent |= {
            m.metadata.message_id: m.metadata.dst_node_id
            for m in sent
            if m.metadata.message_id
        }

    def node_of(self, reply: Message) -> int:
        return self._sent.get(
            reply.metadata.reply_to_message_id, reply.metadata.src_node_id
        )

    def site(self, node: int) -> SiteRecord:
        return self.sites.setdefault(node, SiteRecord(name=f"node-{node}"))

    def name_of(self, reply: Message) -> str:
        return self.site(self.node_of(reply)).name

    # -- federated preprocessing --------------------------------------------------
    def ask_stats(
        self,
        exchange: Callable[[list[Message]], list[Message]],
        messages: list[Message],
        *,
        wait: float,
    ) -> list[dict[str, Any]]:
        """:meth:`summaries` of the replies to ``messages``; a site holding the run
        for its operator is asked again for up to ``wait`` seconds."""
        deadline = time.monotonic() + wait
        return self.summaries(
            until_answered(self.node_of, exchange, messages, deadline=deadline)
        )

    def summaries(self, replies: Iterable[Message]) -> list[dict[str, Any]]:
        """The decoded summaries of usable sites' stats replies; every other site is
        filed as excluded, with why."""
        summaries = []
        self.present = set(self._sent.values())  # only stats queries were sent yet
        for reply in replies:
            node = self.node_of(reply)
            if reply.has_error():
                why = one_line(reply.error.reason or "")
                self.excluded[f"node-{node}"] = f"failed: {why}"
                continue
            try:
                stats = SiteStats.from_content(reply.content)
                if stats.summary is None:
                    self.excluded[stats.name] = stats.reason or "unusable"
                    if stats.decline is not None:
                        logger.warning(
                            "%s declined the run (%s): %s",
                            stats.name,
                            stats.decline.reason,
                            stats.decline.detail,
                        )
                    continue
                summary = summary_from_bytes(stats.summary)
            except ValueError as exc:
                self.excluded[f"node-{node}"] = f"malformed summary: {exc}"
                continue
            summaries.append(summary)
            rows = summary.get("rows")
            examples = rows if isinstance(rows, int) else 0
            self.sites[node] = SiteRecord(
                name=stats.name, examples=examples, declared_rows=examples
            )
        return summaries

    # -- a round's replies --------------------------------------------------------
    def usable(
        self,
        replies: Iterable[Message],
        server_round: int,
        reference: dict[str, np.ndarray] | None,
    ) -> list[Message]:
        """Keep replies fit for aggregation, sorted by site name; record declines,
        failures and rejections. ``reference`` (the global weights) is given for
        training replies only. Raises :class:`FederationError` when a site refused
        the round's protocol."""
        keys = expected_metrics(self.training, train=reference is not None)
        valid = []
        for reply in replies:
            site = self.site(self.node_of(reply))
            event: dict[str, Any] = {"round": server_round}
            node = self.node_of(reply)
            if reply.has_error():
                why = self._failed(site, event, reply.error.reason or "")
                self._answer(node, reference, f"failed: {why}")
                continue
            decline = Decline.from_content(reply.content)
            if decline is not None:
                if reference is not None:
                    site.declines.append(
                        event | {"reason": decline.reason, "detail": decline.detail}
                    )
                why = f"declined: {decline.reason} ({decline.detail})"
                self._answer(node, reference, why)
                continue
            problem = check_reply(reply.content, reference, keys)
            if problem is None and reference is not None:
                problem = self._overclaimed(site, reply)
            if problem is not None:
                site.rejected.append(event | {"reason": problem})
                self._answer(node, reference, f"rejected: {problem}")
                logger.warning(
                    "round %d: rejected reply of %s: %s",
                    server_round,
                    site.name,
                    problem,
                )
                continue
            valid.append(reply)
        valid.sort(key=self.name_of)
        return valid

    def bounded(
        self,
        replies: list[Message],
        server_round: int,
        reference: dict[str, np.ndarray],
    ) -> tuple[list[Message], float]:
        """The training replies whose update norm is within the round's
        :func:`~fedvault.server.checks.norm_bound`, and the bound; the others are
        recorded as rejected (a scaled or extreme update never reaches the
        aggregate)."""
        norms = [
            update_norm(array_record(r.content, ARRAYS), reference) for r in replies
        ]
        bound = norm_bound(norms)
        kept = []
        for reply, norm in zip(replies, norms, strict=True):
            if norm <= bound:
                kept.append(reply)
                continue
            node = self.node_of(reply)
            site = self.site(node)
            reason = f"update norm {norm:.4g} exceeds the round's bound {bound:.4g}"
            site.rejected.append({"round": server_round, "reason": reason})
            self._answers[node] = f"rejected: {reason}"
            logger.warning("round %d: rejected %s: %s", server_round, site.name, reason)
        return kept, bound

    def _overclaimed(self, site: SiteRecord, reply: Message) -> str | None:
        """Why a training reply's example count cannot be true: more rows than the
        site declared in its summary (the weight FedAvg gives it)."""
        try:
            claimed = TrainMetrics.from_record(
                metric_record(reply.content, METRICS), dp=self.training.dp
            ).num_examples
        except ValueError as exc:
            return str(exc)
        if site.declared_rows and claimed > site.declared_rows:
            return (
                f"claims {claimed} examples but declared {site.declared_rows} "
                "training rows"
            )
        return None

    @staticmethod
    def _failed(site: SiteRecord, event: dict[str, Any], reason: str) -> str:
        server_round = event["round"]
        reason = one_line(reason)
        if reason.startswith(MISMATCH_PREFIX):
            raise FederationError(
                f"round {server_round}: {site.name} refused the round's "
                f"protocol ({reason})"
            )
        site.failures.append(event | {"reason": reason})
        logger.warning("round %d: %s failed: %s", server_round, site.name, reason)
        return reason

    def record_training(self, replies: Iterable[Message]) -> None:
        """Count a trained round per site and keep the figures it reported."""
        for reply in replies:
            node = self.node_of(reply)
            site = self.site(node)
            self._answers[node] = TRAINED
            metrics = TrainMetrics.from_record(
                metric_record(reply.content, METRICS), dp=self.training.dp
            )
            site.rounds_trained += 1
            site.examples = metrics.num_examples
            if metrics.dp is not None:
                site.epsilon_spent = metrics.dp.epsilon
                site.epsilon_lifetime = metrics.dp.epsilon_lifetime
                site.epsilon_budget = metrics.dp.epsilon_budget
                site.delta = metrics.dp.delta
                site.accountant = metrics.dp.accountant
                site.noise_multiplier = metrics.dp.noise_multiplier
                site.sample_rate = metrics.dp.sample_rate
                site.noise_from_run_seed = metrics.dp.noise_from_run_seed

    # -- every known site's state in a round ------------------------------------
    def sampled(self, messages: Iterable[Message]) -> None:
        """A training round starts: the nodes it asks (its answers start empty)."""
        self._sampled = {m.metadata.dst_node_id for m in messages}
        self._answers = {}

    def _answer(self, node: int, reference: object, state: str) -> None:
        if reference is not None:  # training replies only
            self._answers[node] = state

    def round_states(
        self, connected: Iterable[int], registered: dict[str, int | None]
    ) -> dict[str, str]:
        """One state per known site, by name, for the training round just run:
        the sites in the run, those excluded from it, and every site of
        ``registered`` (the registry's names and node ids; empty in simulation)."""
        online = set(connected)
        states: dict[str, str] = {}
        for node, site in self.sites.items():
            if node not in self.present | self._sampled:
                continue  # a reply the SuperLink wrote for a message it lost
            states[site.name] = self._answers.get(node) or (
                NO_REPLY
                if node in self._sampled
                else NOT_SAMPLED
                if node in online
                else NOT_CONNECTED
            )
        for name, reason in self.excluded.items():
            states.setdefault(name, f"excluded: {reason}")
        in_run = set(self.sites) | self.present
        for name, known in registered.items():
            if name in states or (known is not None and known in in_run):
                continue
            states[name] = NEXT_RUN if known in online else NOT_CONNECTED
        return dict(sorted(states.items()))

    def per_round(
        self, history: list[dict[str, Any]], stopped: str
    ) -> dict[str, dict[str, str]]:
        """Every known site's state per training round (``summary.json``), from
        the history's rows and, when the run ``stopped`` early, its last round."""
        states = {str(r["round"]): r.get("site_states", {}) for r in history}
        if stopped and self._last_round:
            states[str(self._last_round)] = self.last_states
        return states

    def after_round(
        self, grid: Grid, server_round: int, registry: Path | None
    ) -> dict[str, str]:
        """Every known site's state in the round just run (logged, one line per
        site); a connected site that is not in the run is told, once, that it
        takes part in the next run."""
        connected = list(grid.get_node_ids())
        registered = _registered(registry)
        states = self.round_states(connected, registered)
        self.last_states, self._last_round = states, server_round
        logger.info(
            "round %d: %s",
            server_round,
            "; ".join(f"{name} {state}" for name, state in states.items()),
        )
        names = {node: name for name, node in registered.items() if node is not None}
        late = sorted(set(connected) - set(self.sites) - self.present - self._notified)
        for node in late:
            logger.warning(
                "%s (node %d) connected while this run is in progress: %s",
                names.get(node, "a site"),
                node,
                NEXT_RUN,
            )
        if late:
            self._notified |= set(late)
            notice = ConfigRecord({"text": NEXT_RUN})
            messages = [
                Message(RecordDict({NOTICE: notice}), n, NOTICE_MESSAGE) for n in late
            ]
            send_and_receive(grid, messages, timeout=30.0)  # answers carry nothing
        return states

    # -- outputs ------------------------------------------------------------------
    def table(self) -> dict[str, dict[str, Any]]:
        """Every site's record, by name, as the reports show it (with DP, each
        site's own delta and accountant, and where they differ from the run's)."""
        ordered = sorted(self.sites.values(), key=lambda s: s.name)
        return {s.name: s.as_dict(self.training) for s in ordered}

    def restore(self, records: dict[str, SiteRecord], excluded: dict[str, str]) -> None:
        """Take back what a checkpoint knew, matching sites by name."""
        for node, site in self.sites.items():
            self.sites[node] = records.get(site.name, site)
        self.excluded |= excluded
