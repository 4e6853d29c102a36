"""One training round through Flower's SecAgg+ (legacy workflow stack).

In flwr 1.39 SecAgg+ exists only as ``SecAggPlusWorkflow``, driven by a
``LegacyContext`` and a legacy strategy. fedvault keeps its own round loop and runs
just the training round of a secure run through it:

1. the run's Message-API strategy configures the round as usual (sampling, the DP
   wrapper's clipping norm and accounting event); those messages become the legacy
   ``FitIns`` of :class:`_SumReceiver`;
2. the workflow runs its four stages (setup, share keys, collect masked vectors,
   unmask) through the grid; each site masks ``weight * (local - global)``
   (see ``fedvault.client.mods``), so no reply holds a site's update in the clear;
3. the workflow hands :meth:`_SumReceiver.aggregate_fit` the unmasked weighted
   average of the updates, the only model data the coordinator ever learns;
4. :meth:`SecureRound.run` returns Message-API replies for the round loop: one per
   contributing site, each carrying ``global + average`` and that site's metrics
   (sent in the clear as before), plus the failures and declines of the others.
   The loop then aggregates them with the same strategy (identical arrays average
   to themselves; a DP wrapper adds its noise and charges its accountant), checks,
   checkpoints and reports exactly as in a plain round.

Sites that drop out after the setup stage are tolerated while every site keeps at
least ``threshold`` live neighbours (a majority of those sampled, at least 2): their
masks are reconstructed from the others' secret shares and the sum covers the sites
that sent a masked vector.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import flwr.compat.common.recorddict_compat as compat
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common import FitIns, FitRes, Parameters, Scalar, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
)
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedvault.common.protocol import (
    ARRAY_KEYS,
    ARRAYS,
    CONFIG,
    METRICS,
    SECAGG_CLIPPING_RANGE,
    SECAGG_MAX_WEIGHT,
    SECAGG_MODULUS_RANGE,
    SECAGG_QUANTIZATION_RANGE,
    Decline,
)
from fedvault.common.records import config_record
from fedvault.server.exchange import send_and_receive

NO_REPLY = "dropped out of the SecAgg+ round (no reply)"
HALTED = "the SecAgg+ round halted: too few sites completed it to unmask the sum"


def reconstruction_threshold(sampled: int) -> int:
    """Shares needed to rebuild a site's secrets: a majority, at least 2."""
    return max(2, sampled // 2 + 1)


class _Inbox:
    """The grid as the workflow uses it, keeping every reply the coordinator gets."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.replies: list[Message] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = send_and_receive(self._grid, messages, timeout=timeout)
        self.replies.extend(replies)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class _SumReceiver(LegacyFedAvg):
    """The legacy strategy SecAgg+ drives: it hands out the instructions the
    Message-API strategy configured, and receives the unmasked aggregate."""

    def __init__(self, instructions: list[tuple[ClientProxy, FitIns]]) -> None:
        super().__init__(fraction_evaluate=0.0, accept_failures=True)
        self._instructions = instructions
        self.results: list[tuple[ClientProxy, FitRes]] = []

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return self._instructions

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        # The workflow sets every result's parameters to the same unmasked average.
        self.results = list(results)
        if not results:
            return None, {}
        return results[0][1].parameters, {}


@dataclass(frozen=True)
class SecureResult:
    """What a secure round gives the round loop."""

    replies: list[Message]
    contributors: int


class SecureRound:
    """Runs training rounds through SecAgg+ on ``grid``."""

    def __init__(self, grid: Grid, *, timeout: float, equal_weights: bool) -> None:
        self.grid, self.timeout = grid, timeout
        self.equal_weights = equal_weights

    def run(
        self,
        server_round: int,
        messages: Sequence[Message],
        arrays: ArrayRecord,
        *,
        max_weight: float = SECAGG_MAX_WEIGHT,
    ) -> SecureResult:
        """Run one training round on the sites ``messages`` are addressed to.

        Sites mask ``weight / max_weight`` times their update, weight = their
        example count capped at ``max_weight`` (the largest site's count gives the
        best precision), or 1 for every site with equal weights (client-level DP).
        """
        by_node = {m.metadata.dst_node_id: m for m in messages}
        receiver = _SumReceiver(self._instructions(messages, arrays))
        inbox = _Inbox(self.grid)
        context = LegacyContext(
            Context(
                run_id=int(self.grid.run.run_id),
                node_id=0,
                node_config={},
                state=RecordDict(),
                run_config={},
            ),
            config=ServerConfig(num_rounds=1),
            strategy=receiver,
            client_manager=SimpleClientManager(),
        )
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: server_round}
        )
        context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        workflow = SecAggPlusWorkflow(
            num_shares=1.0,
            reconstruction_threshold=reconstruction_threshold(len(by_node)),
            max_weight=1.0 if self.equal_weights else max(float(max_weight), 1.0),
            clipping_range=SECAGG_CLIPPING_RANGE,
            quantization_range=SECAGG_QUANTIZATION_RANGE,
            modulus_range=SECAGG_MODULUS_RANGE,
            timeout=self.timeout,
        )
        workflow(cast(Grid, inbox), context)
        replies = self._contributions(receiver.results, by_node, arrays)
        contributed = {proxy.node_id for proxy, _ in receiver.results}
        replies += _failures(inbox.replies, by_node, contributed)
        return SecureResult(replies, len(contributed))

    def _instructions(
        self, messages: Sequence[Message], arrays: ArrayRecord
    ) -> list[tuple[ClientProxy, FitIns]]:
        parameters = compat.arrayrecord_to_parameters(arrays, keep_input=True)
        instructions: list[tuple[ClientProxy, FitIns]] = []
        for message in messages:
            config: dict[str, Scalar] = {}
            for key, value in config_record(message.content, CONFIG).items():
                if isinstance(value, bool | int | float | str | bytes):
                    config[key] = value
            config[ARRAY_KEYS] = json.dumps(list(arrays.keys()))
            node = message.metadata.dst_node_id
            proxy = GridClientProxy(node, self.grid, int(self.grid.run.run_id))
            instructions.append((proxy, FitIns(parameters, config)))
        return instructions

    @staticmethod
    def _contributions(
        results: list[tuple[ClientProxy, FitRes]],
        by_node: dict[int, Message],
        arrays: ArrayRecord,
    ) -> list[Message]:
        if not results:
            return []
        average = parameters_to_ndarrays(results[0][1].parameters)
        if len(average) != len(arrays):
            return [
                Message(
                    Error(ErrorCode.UNKNOWN, "SecAgg+ aggregate has the wrong arrays"),
                    reply_to=by_node[proxy.node_id],
                )
                for proxy, _ in results
            ]
        updated = {}
        for (key, array), delta in zip(arrays.items(), average, strict=True):
            current = array.numpy()
            updated[key] = (current + delta.reshape(current.shape)).astype(
                current.dtype
            )
        replies = []
        for proxy, fitres in results:
            content = RecordDict(
                {
                    ARRAYS: ArrayRecord(
                        array_dict={k: Array(v.copy()) for k, v in updated.items()}
                    ),
                    METRICS: _metric_record(fitres.metrics),
                }
            )
            replies.append(Message(content, reply_to=by_node[proxy.node_id]))
        return replies


def _metric_record(metrics: dict[str, Scalar]) -> MetricRecord:
    return MetricRecord(
        {
            k: v
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    )


def _failures(
    received: list[Message], by_node: dict[int, Message], contributed: set[int]
) -> list[Message]:
    """Each non-contributing site's first error (a decline becomes a decline
    reply), else a failure saying why its update is not in the sum."""
    first_error: dict[int, Message] = {}
    masked: set[int] = set()
    for reply in received:
        node = reply.metadata.src_node_id
        if reply.has_error():
            first_error.setdefault(node, reply)
        elif Key.MASKED_PARAMETERS in reply.content.config_records.get(
            RECORD_KEY_CONFIGS, {}
        ):
            masked.add(node)
    out = []
    for node, sent in by_node.items():
        if node in contributed:
            continue
        error = first_error.get(node)
        if error is None:
            lost = HALTED if node in masked else NO_REPLY
            why = Error(ErrorCode.REPLY_MESSAGE_UNAVAILABLE, lost)
            out.append(Message(why, reply_to=sent))
            continue
        decline = Decline.from_reason(error.error.reason or "")
        out.append(error if decline is None else decline.reply(sent))
    return out
