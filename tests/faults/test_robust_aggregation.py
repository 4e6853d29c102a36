"""Flower's Byzantine-robust aggregations through fedvault's round loop: one of
seven sites sends its update sign-flipped and scaled (within the norm bound, so
only the aggregation can defend). Under FedAvg it drags the model far off; under
FedMedian, FedTrimmedAvg, Krum, MultiKrum and Bulyan it does not."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from local_grid import site_run_config

from fedvault.client.app import app as client_app
from fedvault.common.errors import ConfigError
from fedvault.server.federation import Federation
from fedvault.server.settings import ServerSettings

NODES = [1, 2, 3, 4, 5, 6, 7]
HOSTILE = 7
FLIP = -10.0


def _flipping_app(msg: Message, context: Context) -> Message:
    """The real ClientApp; the hostile node sends global + FLIP x its update."""
    reply = client_app(msg, context)
    if context.node_id != HOSTILE or msg.metadata.message_type != "train":
        return reply
    if reply.has_error() or "arrays" not in reply.content.array_records:
        return reply
    received = msg.content.array_records["arrays"]
    local = reply.content.array_records["arrays"]
    flipped = {
        k: Array(
            (
                received[k].numpy() + FLIP * (local[k].numpy() - received[k].numpy())
            ).astype(np.float32)
        )
        for k in local
    }
    content = RecordDict(
        {"arrays": ArrayRecord(array_dict=flipped)}
        | {"metrics": reply.content.metric_records["metrics"]}
    )
    return Message(content, reply_to=msg)


def _accuracy(tmp_path, local_grid, make_contexts, strategy: str) -> float:
    run_config = site_run_config(
        tmp_path / strategy, NODES, rounds=3, strategy=strategy, dp=False
    )
    grid = local_grid(_flipping_app, make_contexts(NODES, run_config))
    Federation(grid, ServerSettings.from_run_config(run_config)).run()
    summary = json.loads((tmp_path / strategy / "out" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert not summary["sites"]["site-7"]["rejected_updates"]  # within the bound
    return float(summary["final"]["accuracy"])


@pytest.mark.slow
def test_robust_strategies_resist_a_flipped_update(tmp_path, local_grid, make_contexts):
    fedavg = _accuracy(tmp_path, local_grid, make_contexts, "fedavg")
    robust = {
        name: _accuracy(tmp_path, local_grid, make_contexts, name)
        for name in ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
    }
    assert fedavg < 0.8, fedavg
    for name, accuracy in robust.items():
        assert accuracy > 0.9, (name, accuracy)


def test_robust_strategies_need_enough_sites(tmp_path, local_grid, make_contexts):
    run_config = site_run_config(tmp_path, NODES[:3], rounds=1, strategy="bulyan")
    grid = local_grid(client_app, make_contexts(NODES[:3], run_config))
    with pytest.raises(ConfigError, match="bulyan with malicious-sites = 1 needs"):
        Federation(grid, ServerSettings.from_run_config(run_config)).run()


def test_robust_strategies_refuse_secagg():
    from fedvault.common.config import TrainingConfig

    with pytest.raises(ConfigError, match="sees only their sum"):
        TrainingConfig(strategy="krum", secagg=True)
