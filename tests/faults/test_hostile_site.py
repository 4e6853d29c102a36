"""A hostile site: one of five runs a modified ClientApp that tampers with its
training replies (scaled, extreme, lying about its size or its privacy). The real
round loop and real ClientApps run over the in-process grid; the honest sites train
with DP-SGD. Each case asserts what the coordinator does with the forged reply."""

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from local_grid import site_run_config

from fedvault.client.app import app as client_app
from fedvault.server.federation import Federation
from fedvault.server.settings import ServerSettings

NODES = [11, 22, 33, 44, 55]
HOSTILE = 55
HOSTILE_NAME = "site-5"


def _tampered(arrays: ArrayRecord, change) -> ArrayRecord:
    return ArrayRecord(
        array_dict={
            k: Array(np.asarray(change(v.numpy()), dtype=np.float32))
            for k, v in arrays.items()
        }
    )


def _hostile_app(*, weights=None, metrics=None):
    """The real ClientApp, whose training replies the hostile node rewrites."""

    def app(msg: Message, context: Context) -> Message:
        reply = client_app(msg, context)
        if context.node_id != HOSTILE or msg.metadata.message_type != "train":
            return reply
        if reply.has_error() or "arrays" not in reply.content.array_records:
            return reply
        arrays = reply.content.array_records["arrays"]
        values = dict(reply.content.metric_records["metrics"])
        content = RecordDict(
            {
                "arrays": arrays if weights is None else _tampered(arrays, weights),
                "metrics": MetricRecord(values | (metrics or {})),
            }
        )
        return Message(content, reply_to=msg)

    return app


def _run(tmp_path, local_grid, make_contexts, app, **training):
    run_config = site_run_config(tmp_path, NODES, **({"rounds": 3} | training))
    grid = local_grid(app, make_contexts(NODES, run_config))
    Federation(grid, ServerSettings.from_run_config(run_config)).run()
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    return summary, json.loads((out / "privacy.json").read_text()), out


@pytest.fixture(scope="module")
def honest(tmp_path_factory, request):
    """Final accuracy of the same federation with five honest sites."""
    from local_grid import LocalGrid, contexts_for

    tmp = tmp_path_factory.mktemp("honest")
    run_config = site_run_config(tmp, NODES, rounds=3)
    grid = LocalGrid(client_app, contexts_for(NODES, run_config))
    with pytest.MonkeyPatch.context() as patch:
        from flwr.supercore.task_identity import TaskIdentity

        for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
            patch.setattr(TaskIdentity, name, value)
        Federation(grid, ServerSettings.from_run_config(run_config)).run()
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    return summary["final"]["accuracy"]


def _rejected(summary) -> list[str]:
    return [r["reason"] for r in summary["sites"][HOSTILE_NAME]["rejected_updates"]]


@pytest.mark.slow
@pytest.mark.parametrize(
    "weights",
    [
        pytest.param(lambda w: w * 1e30, id="scaled-1e30"),
        pytest.param(lambda w: np.full_like(w, 3e38), id="extreme-3e38"),
        pytest.param(lambda w: w * 1e4, id="scaled-1e4"),
    ],
)
def test_a_huge_update_is_rejected_and_the_run_completes(
    tmp_path, local_grid, make_contexts, honest, weights
):
    summary, _, out = _run(
        tmp_path, local_grid, make_contexts, _hostile_app(weights=weights)
    )
    assert summary["status"] == "completed"
    assert len(summary["history"]) == 3
    assert all(row["sites_trained"] == 4 for row in summary["history"])
    assert all(math.isfinite(row["update_norm_bound"]) for row in summary["history"])
    reasons = _rejected(summary)
    assert len(reasons) == 3 and all("exceeds the round's bound" in r for r in reasons)
    # The model is the honest sites' model: no broken round, accuracy as without
    # the attacker (within the noise of one site fewer).
    assert summary["final"]["accuracy"] >= honest - 0.05
    for name, site in summary["sites"].items():
        if name != HOSTILE_NAME:
            assert site["rounds_trained"] == 3 and not site["declines"]
    assert (out / "model.pt").exists()


@pytest.mark.slow
def test_a_site_cannot_claim_more_examples_than_it_declared(
    tmp_path, local_grid, make_contexts, honest
):
    app = _hostile_app(
        weights=lambda w: np.random.default_rng(0).normal(size=w.shape),
        metrics={"num-examples": 1e12},
    )
    summary, _, _ = _run(tmp_path, local_grid, make_contexts, app)
    reasons = _rejected(summary)
    assert len(reasons) == 3
    assert all("claims 1000000000000 examples but declared" in r for r in reasons)
    assert summary["final"]["accuracy"] >= honest - 0.05


@pytest.mark.slow
def test_a_site_reporting_zero_epsilon_is_labelled_as_its_own_report(
    tmp_path, local_grid, make_contexts
):
    app = _hostile_app(metrics={"epsilon": 0.0, "epsilon-lifetime": 0.0})
    summary, privacy, out = _run(tmp_path, local_grid, make_contexts, app)
    assert summary["sites"][HOSTILE_NAME]["epsilon_spent"] == 0.0
    assert (
        "the site's own privacy ledger is the authority"
        in (privacy["site_figures_source"])
    )
    text = (out / "privacy.txt").read_text()
    assert "as reported by each site" in text


def test_a_site_declines_a_non_finite_global_model(tmp_path, local_grid, make_contexts):
    """A site spends nothing on a broken model: it declines before its budget."""
    run_config = site_run_config(tmp_path, NODES[:1], rounds=1)
    context = make_contexts(NODES[:1], run_config)[NODES[0]]
    from fedvault.common.data import default_dataset
    from fedvault.common.models import build_model
    from fedvault.common.preprocessing import merge_summaries, site_summary

    prep = merge_summaries([site_summary(default_dataset(), "target")], "target")
    model = build_model("mlp", in_features=prep.num_features, num_classes=2)
    arrays = ArrayRecord(model.state_dict())
    first = next(iter(arrays))
    broken = arrays[first].numpy().copy()
    broken[0] = np.inf
    arrays[first] = Array(broken)
    config = {"preprocessing": prep.to_json(), "server-round": 1}
    from flwr.app import ConfigRecord

    msg = Message(
        RecordDict({"arrays": arrays, "config": ConfigRecord(config)}),
        dst_node_id=NODES[0],
        message_type="train",
    )
    reply = client_app(msg, context)
    decline = reply.content.config_records["decline"]
    assert decline["reason"] == "policy" and "not finite" in str(decline["detail"])
    assert not (tmp_path / "state-0" / "ledger" / "bc.jsonl").exists()


@pytest.mark.slow
def test_extreme_updates_from_most_sites_are_never_broadcast(
    tmp_path, local_grid, make_contexts
):
    """Three of five sites send 3e38 everywhere: the majority would set the
    relative norm bound, the absolute ceiling still rejects them; the two honest
    sites (min-sites = 2) carry the run."""

    def app(msg: Message, context: Context) -> Message:
        reply = client_app(msg, context)
        hostile = context.node_id in NODES[2:]
        if not hostile or msg.metadata.message_type != "train" or reply.has_error():
            return reply
        arrays = reply.content.array_records["arrays"]
        content = RecordDict(
            {
                "arrays": _tampered(arrays, lambda w: np.full_like(w, 3e38)),
                "metrics": reply.content.metric_records["metrics"],
            }
        )
        return Message(content, reply_to=msg)

    summary, _, out = _run(tmp_path, local_grid, make_contexts, app, rounds=2)
    assert summary["status"] == "completed"
    assert [row["sites_trained"] for row in summary["history"]] == [2, 2]
    for name in ("site-3", "site-4", "site-5"):
        rejected = summary["sites"][name]["rejected_updates"]
        assert len(rejected) == 2
        assert all("exceeds the round's bound 1e+06" in r["reason"] for r in rejected)
    assert summary["final"]["accuracy"] > 0.9
    saved = torch.load(out / "model.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())


@pytest.mark.slow
def test_a_non_finite_aggregate_is_discarded_not_broadcast(
    tmp_path, local_grid, make_contexts, monkeypatch
):
    """Whatever produced it, an aggregate that is not finite is never sent: the
    round is discarded and the next starts from the last finite global model."""
    from flwr.serverapp.strategy import FedAvg

    def broken(self, server_round, replies):
        arrays = replies[0].content.array_records["arrays"]
        return _tampered(arrays, lambda w: np.full_like(w, np.nan)), None

    monkeypatch.setattr(FedAvg, "aggregate_train", broken)
    summary, _, out = _run(tmp_path, local_grid, make_contexts, client_app, rounds=2)
    assert summary["status"] == "completed"
    assert [row["discarded"] for row in summary["history"]] == [
        "aggregate rejected: " + row["discarded"].split(": ", 1)[1]
        for row in summary["history"]
    ]
    assert all("NaN or infinite" in row["discarded"] for row in summary["history"])
    assert all(s["declines"] == [] for s in summary["sites"].values())
    saved = torch.load(out / "model.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
