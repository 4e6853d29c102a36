"""The coordinator's round loop on Flower's Grid (Message API).

fedvault drives the strategy's own ``configure_*``/``aggregate_*`` steps itself instead
of ``Strategy.start`` so that it can, in one place: refuse malformed updates (wrong
shape, NaN/Inf), record per-site privacy figures and declines, stop cleanly when too
few sites can train, and checkpoint and report after every round.

With ``secagg`` the training exchange of a round runs through SecAgg+
(:mod:`fedvault.server.secagg`), which returns Message-API replies carrying only the
unmasked aggregate; everything after it (checks, the strategy's aggregation with any
client-level DP wrapper, evaluation, checkpoints, reports) is the same code path.
A site that refuses a round's protocol (``MISMATCH_PREFIX``) fails the run.

What each site answered (declines, failures, rejected updates, privacy figures) is
kept by :class:`fedvault.server.sites.SiteBook`, so that this module reads as the
round loop: send, check, aggregate, evaluate, checkpoint, resume.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, replace
from typing import Any, cast

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedvault.common.errors import FederationError
from fedvault.common.models import build_run_model
from fedvault.common.preprocessing import Preprocessing, merge_summaries
from fedvault.common.protocol import PREPROCESSING, STATS_MESSAGE
from fedvault.common.records import number
from fedvault.server import checkpoint, drift, lineage, model_card
from fedvault.server.central_eval import held_out_metrics, held_out_set, site_metrics
from fedvault.server.checks import check_update, dequantize_replies, release_problem
from fedvault.server.exchange import send_and_receive
from fedvault.server.report import (
    client_dp_section,
    privacy_report,
    privacy_text,
    run_summary,
)
from fedvault.server.rundir import (
    PREPROCESSING_FILE,
    PRIVACY_FILE,
    PRIVACY_TEXT_FILE,
    SUMMARY_FILE,
    RunDirectory,
)
from fedvault.server.secagg import SecureRound
from fedvault.server.settings import ServerSettings
from fedvault.server.site_validation import VAL_SITES, validation_by_site
from fedvault.server.sites import SiteBook
from fedvault.server.strategy import StrategyPlan, make_strategy

logger = logging.getLogger(__name__)


class _EligibleGrid:
    """The grid as the strategy should see it: only sites that can train."""

    def __init__(self, grid: Grid, eligible: set[int]) -> None:
        self._grid, self._eligible = grid, eligible

    def get_node_ids(self) -> Iterator[int]:
        return (n for n in self._grid.get_node_ids() if n in self._eligible)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class Federation:
    """One federated run, from federated preprocessing to the final report."""

    def __init__(self, grid: Grid, settings: ServerSettings) -> None:
        self.grid, self.settings = grid, settings
        self.training = settings.training
        self.rundir = RunDirectory(settings.out_dir)
        self.book = SiteBook(self.training, settings.excluded_sites)
        self.history: list[dict[str, Any]] = []
        self.stop_reason = ""
        self.plan: StrategyPlan | None = None
        self.received: dict[str, Any] | None = None  # pooled site summaries
        self.parent: lineage.Parent | None = None  # the model round 1 starts from
        self.secure = (
            SecureRound(
                grid,
                timeout=self.training.round_timeout,
                equal_weights=self.training.client_dp != "off",
            )
            if self.training.secagg
            else None
        )

    # -- set-up ---------------------------------------------------------------
    def _wait_for_sites(self, had: int) -> list[int]:
        """Wait for the sites; a resumed run for the ``had`` its checkpoint had (up
        to round-timeout, then it goes on with at least expected-sites)."""
        wanted = max(self.settings.expected_sites, self.training.min_sites)
        deadline = time.monotonic() + self.training.round_timeout
        while len(nodes := list(self.grid.get_node_ids())) < max(wanted, had):
            if time.monotonic() > deadline and len(nodes) >= wanted:
                break  # a resumed run goes on; a late site joins the next run
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(nodes)} of {wanted} sites connected within "
                    f"{self.training.round_timeout:g} s"
                )
            time.sleep(0.5)
        return sorted(nodes)

    def _preprocessing(self, nodes: list[int]) -> Preprocessing:
        """Ask every site for summary counts and merge them (no rows are sent)."""
        messages = [
            Message(RecordDict(), message_type=STATS_MESSAGE, dst_node_id=n)
            for n in nodes
        ]
        wait = self.training.round_timeout  # for a site holding the run
        summaries = self.book.ask_stats(self._exchange, messages, wait=wait)
        if len(summaries) < self.training.min_sites:
            raise FederationError(
                f"only {len(summaries)} site(s) can train; min-sites is "
                f"{self.training.min_sites} (excluded: {self.book.excluded})"
            )
        prep = merge_summaries(summaries, self.settings.target)
        names = [s.name for s in self.book.sites.values()]  # in reply order
        self.received = drift.write_received(self.rundir.root, names, summaries)
        # With --init-model the parent's encoding is kept across versions.
        self.parent = lineage.start(self.settings, prep, self.received)
        return prep if self.parent is None else self.parent.prep

    def _exchange(self, messages: Iterable[Message]) -> list[Message]:
        """Send and wait, remembering where each message went."""
        sent = list(messages)
        replies = send_and_receive(self.grid, sent, timeout=self.training.round_timeout)
        self.book.remember(sent)
        return replies

    # -- the run ----------------------------------------------------------------
    def run(self) -> None:
        """Run all rounds; a clean stop still leaves a summary, an error an event."""
        try:
            self._run()
        except Exception as exc:
            self.rundir.event("error", message=f"{type(exc).__name__}: {exc}")
            raise

    def _run(self) -> None:
        random.seed(self.training.seed)
        torch.manual_seed(self.training.seed)
        if self.settings.simulation:
            # Flower's client-level DP wrappers draw their noise from numpy's
            # global generator: seeded only in simulation (see ServerSettings).
            np.random.seed(self.training.seed % 2**32)
        self.rundir.event("start", rounds=self.training.rounds)
        state = checkpoint.load(self.settings.out_dir) if self.settings.resume else None
        nodes = self._wait_for_sites(len(state.sites) if state else 0)
        prep = self._preprocessing(nodes)
        resumed = self._resume(state) if state is not None else None
        if resumed is not None:
            prep = Preprocessing.from_json(resumed.preprocessing)
        if prep.regression and self.training.task != "regression":
            # the sites summarized a regression target: replies carry its metrics
            self.training = replace(self.training, task="regression")
            self.book.training = self.training
        self.rundir.write_json(PREPROCESSING_FILE, json.loads(prep.to_json()))
        self.rundir.event(
            "ready",
            sites=sorted(s.name for s in self.book.sites.values()),
            excluded=self.book.excluded,
        )
        model, notes = build_run_model(
            self.training.model, prep, hidden=self.training.hidden, dp=self.training.dp
        )
        for note in notes:
            logger.warning("model fitted for DP-SGD: %s", note)
        if self.parent is not None:  # round 1's global model is the parent
            model.load_state_dict(self.parent.state_dict)
        if resumed is not None:
            model.load_state_dict(
                {k: torch.from_numpy(v) for k, v in resumed.arrays.items()}
            )
        arrays = ArrayRecord(model.state_dict())
        test = held_out_set(self.settings.test_data, prep)
        # Duck-typed view: the strategy only calls get_node_ids() on it.
        eligible = cast(Grid, _EligibleGrid(self.grid, set(self.book.sites)))
        self.plan = make_strategy(self.training, available=len(self.book.sites))
        if resumed is not None:
            checkpoint.restore_strategy(self.plan.strategy, resumed.strategy)
        first = len(self.history) + 1
        for server_round in range(first, self.training.rounds + 1):
            new_arrays = self._round(
                server_round, self.plan, eligible, arrays, prep, test
            )
            if new_arrays is None:
                break
            arrays = new_arrays
            model.load_state_dict(arrays.to_torch_state_dict())
            self._checkpoint(model, prep)
        self._checkpoint(model, prep)
        self._write_summary(prep)

    def _model(self, prep: Preprocessing) -> torch.nn.Module:
        model, _ = build_run_model(
            self.training.model, prep, hidden=self.training.hidden, dp=self.training.dp
        )
        return model

    def _round(
        self,
        server_round: int,
        plan: StrategyPlan,
        grid: Grid,
        arrays: ArrayRecord,
        prep: Preprocessing,
        test: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> ArrayRecord | None:
        started = time.monotonic()
        config = ConfigRecord({PREPROCESSING: prep.to_json()})
        reference = {k: v.numpy() for k, v in arrays.items()}
        replies, summed = self._train(server_round, plan.strategy, grid, arrays, config)
        if self.training.compress == "int8":
            dequantize_replies(replies, reference)
        valid = self.book.usable(replies, server_round, reference)
        bound = math.inf
        if self.training.client_dp == "off" and self.secure is None:
            # (Client-level DP clips every update itself; SecAgg+ replies all carry
            # the same, already bounded, sum.)
            valid, bound = self.book.bounded(valid, server_round, reference)
        # Every site whose update is usable spent budget on it: counted even when
        # the round then stops unreleased, so the report agrees with its ledger.
        self.book.record_training(valid)
        self.book.after_round(self.grid, server_round, self.settings.registry)
        if len(valid) < plan.min_train_nodes:
            self._stop(
                server_round,
                f"round {server_round}: only {len(valid)} site(s) trained, fewer "
                f"than min-sites={plan.min_train_nodes}",
            )
            return None
        problem = release_problem(
            self.training, sampled=plan.sampled, usable=len(valid), summed=summed
        )
        if problem is not None:
            self._stop(server_round, f"round {server_round}: {problem}")
            return None
        new_arrays, _ = plan.strategy.aggregate_train(server_round, valid)
        row: dict[str, Any] = {"round": server_round, "sites_trained": len(valid)}
        if math.isfinite(bound):
            row["update_norm_bound"] = bound
        problem = (
            "no aggregate"
            if new_arrays is None
            else check_update(new_arrays, reference)
        )
        if new_arrays is None or problem is not None:
            # Never broadcast a broken model: the round is discarded and the next
            # one starts again from the current global model.
            row["discarded"] = f"aggregate rejected: {problem}"
            logger.warning("round %d: %s; discarded", server_round, row["discarded"])
            new_arrays = arrays
        else:
            row |= self._evaluate(
                server_round, plan.strategy, grid, new_arrays, prep, test
            )
        row["seconds"] = round(time.monotonic() - started, 3)
        row["site_states"] = self.book.last_states
        self.history.append(row)
        self.rundir.event("round", **row, sites=self.book.table())
        return new_arrays

    def _train(
        self,
        server_round: int,
        strategy: Strategy,
        grid: Grid,
        arrays: ArrayRecord,
        config: ConfigRecord,
    ) -> tuple[list[Message], int | None]:
        """The round's training replies, in the clear or through SecAgg+ (then
        also how many sites' masked updates the sum holds)."""
        messages = list(strategy.configure_train(server_round, arrays, config, grid))
        self.book.sampled(messages)
        if self.secure is None:
            return self._exchange(messages), None
        # Weights are example counts, known from preprocessing: the largest bounds them.
        largest = max((s.examples for s in self.book.sites.values()), default=1)
        result = self.secure.run(server_round, messages, arrays, max_weight=largest)
        return result.replies, result.contributors

    def _stop(self, server_round: int, reason: str) -> None:
        self.stop_reason, sites = reason, self.book.last_states
        logger.warning("%s; stopping", reason)
        self.rundir.event("stopped", round=server_round, reason=reason, sites=sites)

    def _evaluate(
        self,
        server_round: int,
        strategy: Strategy,
        grid: Grid,
        arrays: ArrayRecord,
        prep: Preprocessing,
        test: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> dict[str, Any]:
        # Sites release noisy counts, never a validation loss (docs/privacy.md).
        row: dict[str, Any] = {"val_loss": math.nan}
        if test is not None:
            model = self._model(prep)
            model.load_state_dict(arrays.to_torch_state_dict())
            row |= held_out_metrics(model, test, prep, self.training.regression_loss)
        config = ConfigRecord({PREPROCESSING: prep.to_json()})
        replies = self._exchange(
            strategy.configure_evaluate(server_round, arrays, config, grid)
        )
        valid = self.book.usable(replies, server_round, None)
        if valid:
            agg: Mapping[str, object] = (
                strategy.aggregate_evaluate(server_round, valid) or {}
            )
            row |= {f"val_{k}": number(agg, k) for k in site_metrics(prep)}
        else:
            row |= {f"val_{k}": math.nan for k in site_metrics(prep)}
        row[VAL_SITES] = validation_by_site(self.book, valid, site_metrics(prep))
        return row

    # -- outputs --------------------------------------------------------------------
    def _resume(self, state: checkpoint.RunState) -> checkpoint.RunState:
        """Continue from the last completed round: history, what is known of each
        site (matched by name to the sites that answered now), model, strategy."""
        if state.run_key != self.settings.run_key:
            raise FederationError("the checkpoint belongs to another run (run key)")
        if self.training.client_dp != "off":
            raise FederationError(
                "resuming a run with client-level DP is not "
                "supported: Flower's accountant state is not saved"
            )
        self.book.restore(state.site_records(), state.excluded)
        self.history = list(state.history)
        self.rundir.event("resumed", rounds_completed=state.rounds_completed)
        logger.info("resuming after round %d", state.rounds_completed)
        return state

    def _checkpoint(self, model: torch.nn.Module, prep: Preprocessing) -> None:
        strategy = None if self.plan is None else self.plan.strategy
        checkpoint.save(
            self.settings.out_dir,
            checkpoint.RunState(
                run_key=self.settings.run_key,
                rounds_completed=len(self.history),
                arrays={
                    k: v.detach().cpu().numpy() for k, v in model.state_dict().items()
                },
                preprocessing=prep.to_json(),
                history=self.history,
                sites={s.name: asdict(s) for s in self.book.records()},
                excluded=self.book.excluded,
                strategy=checkpoint.strategy_state(strategy),
            ),
        )
        self.rundir.save_model(
            {
                "state_dict": model.state_dict(),
                "preprocessing": prep.to_json(),
                "config": self.training.to_run_config(),
                "rounds_completed": len(self.history),
            }
            | lineage.bundle_fields(self.parent, self.received)
        )
        self.rundir.write_metrics_csv(self.history)

    def _write_summary(self, prep: Preprocessing) -> None:
        t = self.training
        sites = self.book.table()
        figures = None if self.plan is None else self.plan.figures(len(self.book.sites))
        client_level = client_dp_section(t, figures=figures)
        summary = run_summary(
            t,
            history=self.history,
            sites=sites,
            excluded=self.book.excluded,
            prep=prep,
            stop_reason=self.stop_reason,
            client_level=client_level,
        )
        summary["site_states"] = self.book.per_round(self.history, self.stop_reason)
        report = privacy_report(t, sites, client_level=client_level)
        self.rundir.write_json(PRIVACY_FILE, report)
        self.rundir.write_text(PRIVACY_TEXT_FILE, privacy_text(report))
        self.rundir.write_json(SUMMARY_FILE, summary)
        model_card.write_for_run(self.rundir.root, test_data=self.settings.test_data)
        self.rundir.event("done", status=summary["status"], reason=self.stop_reason)
