"""SecAgg+ rounds with real Flower pieces (SecAggPlusWorkflow, secaggplus_mod) and
fedvault's own glue on both sides, over an in-process grid that keeps everything the
coordinator receives."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)

from fedvault.client.mods import privacy_mod
from fedvault.common.config import TrainingConfig
from fedvault.common.protocol import MISMATCH_PREFIX, quantization_step
from fedvault.server.secagg import (
    HALTED,
    NO_REPLY,
    SecureRound,
    reconstruction_threshold,
)

NODES = [11, 22, 33]
EXAMPLES = {11: 40, 22: 100, 33: 250}
MAX_WEIGHT = 250  # the largest site's example count, as the coordinator sets it
GLOBAL = {
    "w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "b": np.zeros(4, dtype=np.float32),
}


def _delta(node):
    rng = np.random.default_rng(node)
    return {
        k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in GLOBAL.items()
    }


def _toy_app():
    """A site that 'trains' to global + its fixed delta."""
    app = ClientApp(mods=[privacy_mod])

    @app.train()
    def train(msg, context):
        node = msg.metadata.dst_node_id
        received = msg.content.array_records["arrays"].to_numpy_ndarrays()
        local = {
            k: (r + d).astype(np.float32)
            for (k, d), r in zip(_delta(node).items(), received, strict=True)
        }
        metrics = MetricRecord({"num-examples": EXAMPLES[node], "steps": 3})
        return Message(
            RecordDict(
                {
                    "arrays": ArrayRecord(numpy_ndarrays=list(local.values())),
                    "metrics": metrics,
                }
            ),
            reply_to=msg,
        )

    return app


def _messages(nodes):
    config = ConfigRecord({"preprocessing": "{}", "server-round": 1})
    arrays = ArrayRecord(numpy_ndarrays=list(GLOBAL.values()))
    arrays = ArrayRecord({k: arrays[str(i)] for i, k in enumerate(GLOBAL)})
    content = RecordDict({"arrays": arrays, "config": config})
    return arrays, [
        Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes
    ]


def _run(local_grid, make_contexts, drop=None, **settings):
    run_config = TrainingConfig(dp=False, secagg=True, **settings).to_run_config()
    grid = local_grid(_toy_app(), make_contexts(NODES, run_config), drop=drop)
    arrays, messages = _messages(NODES)
    result = SecureRound(grid, timeout=5.0, equal_weights=False).run(
        1, messages, arrays, max_weight=MAX_WEIGHT
    )
    return grid, result


def _stage(message):
    configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
    return None if configs is None else configs.get(Key.STAGE)


def _plain_average(nodes):
    weights = np.array([EXAMPLES[n] for n in nodes], dtype=float)
    return {
        k: GLOBAL[k]
        + sum(w * _delta(n)[k] for w, n in zip(weights, nodes, strict=True))
        / weights.sum()
        for k in GLOBAL
    }


def _tolerance(nodes):
    # each site's masked value is off by < 1 quantization step; the sum is then
    # divided by the sum of the weight ratios
    ratios = sum(EXAMPLES[n] / MAX_WEIGHT for n in nodes)
    return len(nodes) * quantization_step() / ratios + 1e-6


def test_the_coordinator_only_receives_masked_vectors(local_grid, make_contexts):
    grid, result = _run(local_grid, make_contexts)
    plain = [np.concatenate([v.ravel() for v in _delta(n).values()]) for n in NODES]
    masked_seen = 0
    for reply in grid.received:
        assert not reply.has_error()
        for record in reply.content.array_records.values():
            assert len(record) == 0  # the mod clears the update it masked
        configs = reply.content.config_records[RECORD_KEY_CONFIGS]
        if Key.MASKED_PARAMETERS not in configs:
            continue
        masked_seen += 1
        vector = np.concatenate(
            [
                np.load(__import__("io").BytesIO(b)).ravel()
                for b in configs[Key.MASKED_PARAMETERS]
            ]
        ).astype(float)
        # uniformly spread over [0, 2^32): nothing like a site's update in clear
        assert vector.max() > 2**28
        for update in plain:
            assert not np.allclose(vector[1:], update, atol=1.0)
    assert masked_seen == 3
    assert result.contributors == 3 and len(result.replies) == 3
    expected = _plain_average(NODES)
    for reply in result.replies:
        arrays = reply.content.array_records["arrays"]
        for key, value in expected.items():
            np.testing.assert_allclose(
                arrays[key].numpy(), value, atol=_tolerance(NODES), rtol=0
            )
        metrics = reply.content.metric_records["metrics"]
        assert metrics["num-examples"] == EXAMPLES[reply.metadata.src_node_id]


@pytest.mark.parametrize(
    ("stage", "summed"),
    [(Stage.COLLECT_MASKED_VECTORS, [11, 22]), (Stage.UNMASK, NODES)],
)
def test_a_site_dropping_out_mid_round_still_yields_an_aggregate(
    local_grid, make_contexts, stage, summed
):
    def drop(node, message):
        return node == 33 and _stage(message) == stage

    assert reconstruction_threshold(3) == 2
    _, result = _run(local_grid, make_contexts, drop=drop)
    assert result.contributors == len(summed)
    expected = _plain_average(summed)
    aggregates = [r for r in result.replies if not r.has_error()]
    assert len(aggregates) == len(summed)
    for key, value in expected.items():
        np.testing.assert_allclose(
            aggregates[0].content.array_records["arrays"][key].numpy(),
            value,
            atol=_tolerance(summed),
            rtol=0,
        )
    failures = [r for r in result.replies if r.has_error()]
    assert [f.error.reason for f in failures] == (
        [NO_REPLY] if stage == Stage.COLLECT_MASKED_VECTORS else []
    )


def test_too_many_dropouts_release_nothing(local_grid, make_contexts):
    def drop(node, message):
        return node != 11 and _stage(message) == Stage.COLLECT_MASKED_VECTORS

    _, result = _run(local_grid, make_contexts, drop=drop)
    assert result.contributors == 0
    reasons = sorted(r.error.reason for r in result.replies)
    assert reasons == sorted([HALTED, NO_REPLY, NO_REPLY])


def _plain_train_message(config=None):
    _, messages = _messages([11])
    if config:
        for k, v in config.items():
            messages[0].content.config_records["config"][k] = v
    return messages[0]


@pytest.mark.parametrize(
    ("settings", "message", "needle"),
    [
        ({"secagg": True}, "plain", "plain training message"),
        ({}, "secagg", "does not ask for secagg"),
        ({"client_dp": "client-fixed"}, "plain", "did not send a clipping norm"),
        ({}, "clipping", "sent a clipping norm"),
    ],
)
def test_a_protocol_mismatch_is_refused(
    local_grid, make_contexts, settings, message, needle
):
    run_config = TrainingConfig(dp=False, **settings).to_run_config()
    grid = local_grid(_toy_app(), make_contexts([11], run_config))
    if message == "secagg":
        outgoing = Message(
            RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: Stage.SETUP})}),
            dst_node_id=11,
            message_type=MessageType.TRAIN,
        )
    elif message == "clipping":
        outgoing = _plain_train_message({"clipping_norm": 1.0})
    else:
        outgoing = _plain_train_message()
    (reply,) = grid.send_and_receive([outgoing])
    assert reply.has_error()
    assert reply.error.reason.startswith(MISMATCH_PREFIX)
    assert needle in reply.error.reason
