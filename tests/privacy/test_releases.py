"""Everything a site releases is a Gaussian mechanism on its ledger (issue 11, cases
4, 5 and 6): no raw value leaves in a summary or lands in the model, the summary
is one release per dataset version (a coordinator replaying seeds learns nothing
new), and validation metrics are noisy counts, charged each time."""

import struct

import numpy as np
import pandas as pd
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.supercore.task_identity import TaskIdentity
from local_grid import site_run_config

from fedvault.client.app import app as client_app
from fedvault.client.ledger import verify_ledger
from fedvault.common.config import TrainingConfig
from fedvault.common.data import default_dataset
from fedvault.common.models import build_model
from fedvault.common.preprocessing import merge_summaries, site_summary
from fedvault.common.protocol import STATS_MESSAGE, SiteStats, TrainMetrics
from fedvault.common.wire import summary_from_bytes
from fedvault.server.federation import Federation
from fedvault.server.settings import ServerSettings

pytestmark = pytest.mark.privacy

NODES = [101, 202, 303]
LONE_CODE = "ICD-RARE-Q77.9"
LAB_VALUE = 123.456789


def _name(i):
    return f"Patient Zebulon-{i:04d} Quixote"


def _with_personal_columns(run_config):
    """Each site's rows plus a name per row, a code one row holds, and a lab value
    one patient has."""
    test = pd.read_parquet(run_config["test-data"])
    test["full_name"] = [f"test-{i}" for i in range(len(test))]
    test["diagnosis"], test["lab"] = "C50", np.nan
    test.to_parquet(run_config["test-data"], index=False)
    first = True
    for key, value in list(run_config.items()):
        if not key.endswith(".data"):
            continue
        frame = pd.read_parquet(value)
        frame["full_name"] = (
            [_name(i) for i in range(len(frame))]
            if first
            else [f"{_name(i)}-b{key}" for i in range(len(frame))]
        )
        frame["diagnosis"] = ["C50" if i % 2 else "D24" for i in range(len(frame))]
        frame["lab"] = np.nan
        if first:
            frame.loc[3, "diagnosis"] = LONE_CODE
            frame.loc[5, "lab"] = LAB_VALUE
        frame.to_parquet(value, index=False)
        first = False
    return run_config


def _leaks(blob: bytes) -> list[str]:
    found = [s for s in (LONE_CODE, "Zebulon", f"{LAB_VALUE}") if s.encode() in blob]
    for fmt in ("<d", "<f"):
        if struct.pack(fmt, LAB_VALUE) in blob:
            found.append(f"lab value as {fmt}")
    return found


def test_no_raw_value_leaves_a_site_or_lands_in_the_run_folder(
    tmp_path, local_grid, make_contexts
):
    run_config = _with_personal_columns(site_run_config(tmp_path, NODES, rounds=1))
    out = tmp_path / "out"
    run_config |= {"out-dir": str(out), "run-key": "r"}
    grid = local_grid(client_app, make_contexts(NODES, run_config))
    Federation(grid, ServerSettings.from_run_config(run_config)).run()

    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "model.pt" for p in files)
    assert any(p.name == "preprocessing.json" for p in files)
    for path in files:
        assert _leaks(path.read_bytes()) == [], path
    assert grid.received
    for reply in grid.received:
        blob = recorddict_to_proto(reply.content).SerializeToString()
        assert _leaks(blob) == []
    prep = (out / "preprocessing.json").read_text()
    assert "full_name" not in prep  # identifier-like: dropped, not a category
    assert "lab" in prep  # the lab column stays, its summary noised


@pytest.fixture
def _identity(monkeypatch):
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _site(tmp_path):
    run_config = site_run_config(tmp_path, [7])
    return {
        k.removeprefix("site.0."): v
        for k, v in run_config.items()
        if k.startswith("site.0.")
    } | {"site-name": "st-mary"}


def _context(node, seed, run_key, **training):
    run_config = TrainingConfig(**({"rounds": 2, "seed": seed} | training))
    config = run_config.to_run_config() | {"target": "target", "run-key": run_key}
    return Context(
        run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=config
    )


def _stats(node, seed):
    msg = Message(RecordDict(), dst_node_id=7, message_type=STATS_MESSAGE)
    return client_app(msg, _context(node, seed, f"run-{seed}"))


@pytest.mark.usefixtures("_identity")
def test_replaying_seeds_returns_one_release_and_rebuilds_nothing(tmp_path):
    node = _site(tmp_path)
    replies = [SiteStats.from_content(_stats(node, seed).content) for seed in range(30)]
    blobs = {r.summary for r in replies}
    assert len(blobs) == 1 and None not in blobs  # identical bytes, every time
    records = verify_ledger(tmp_path / "state-0", "bc")
    assert [r.run_id.split(":")[0] for r in records] == ["summary"]  # charged once

    # The replay attack of issue 11: guess each seed's split, solve least squares.
    frame = pd.read_parquet(node["data"])
    values = frame["mean radius"].to_numpy()
    lo, hi = default_dataset()["mean radius"].agg(["min", "max"])
    rows, sums = [], []
    for seed in range(30):
        order = np.random.default_rng(seed).permutation(len(frame))
        member = np.ones(len(frame))
        member[order[: round(len(frame) * 0.15)]] = 0.0
        column = summary_from_bytes(replies[seed].summary)["numeric"]["mean radius"]
        rows.append(member)
        sums.append(lo * member.sum() + (hi - lo) * column["sum"])
    guess, *_ = np.linalg.lstsq(np.array(rows), np.array(sums), rcond=None)
    error = np.abs(guess - values).mean()
    assert error > 0.5 * values.std()


def _evaluate(node, prep, model, run_key="eval-run"):
    config = {"preprocessing": prep.to_json(), "server-round": 1}
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord(config)}
    )
    msg = Message(content, dst_node_id=7, message_type="evaluate")
    return client_app(msg, _context(node, 0, run_key))


@pytest.mark.usefixtures("_identity")
def test_a_crafted_model_buys_noisy_charged_counts_not_an_oracle(tmp_path):
    node = _site(tmp_path)
    prep = merge_summaries([site_summary(default_dataset(), "target")], "target")
    model = build_model("mlp", in_features=prep.num_features, num_classes=2)
    metrics = [
        _evaluate(node, prep, model).content.metric_records["metrics"] for _ in range(2)
    ]
    assert set(metrics[0]) == {"num-examples", "accuracy"}  # no validation loss
    assert metrics[0]["num-examples"] != metrics[1]["num-examples"] or (
        metrics[0]["accuracy"] != metrics[1]["accuracy"]
    )
    records = verify_ledger(tmp_path / "state-0", "bc")
    charged = [r for r in records if r.run_id == "eval-run:eval"]
    assert len(charged) == 2 and all(r.sample_rate == 1.0 for r in charged)


def test_training_replies_carry_no_loss_and_only_the_released_row_count(
    tmp_path, local_grid, make_contexts
):
    nodes = [11, 22]
    run_config = site_run_config(tmp_path, nodes, rounds=1)
    grid = local_grid(client_app, make_contexts(nodes, run_config))
    Federation(grid, ServerSettings.from_run_config(run_config)).run()

    released = {}  # site -> the noisy row count its summary released
    trained = []
    for reply in grid.received:
        kind = reply.metadata.message_type
        if kind == STATS_MESSAGE:
            stats = SiteStats.from_content(reply.content)
            released[stats.name] = summary_from_bytes(stats.summary)["rows"]
        elif kind == "train":
            trained.append(reply.content.metric_records["metrics"])
    assert len(trained) == 2 and len(released) == 2
    for metrics in trained:
        assert set(metrics) == TrainMetrics.keys(dp=True, client_weight=False)
        assert not any("loss" in key for key in metrics)
        assert metrics["num-examples"] in set(released.values())
    # (This run's seeded noise moved every released count off the exact one.)
    for i in range(2):
        rows = len(pd.read_parquet(run_config[f"site.{i}.data"]))
        assert rows - round(rows * 0.15) not in set(released.values())


def test_without_noise_the_summary_reads_back_each_column_in_place():
    """A categorical column before the numeric ones (as in most real tables): each
    released coordinate is read back under its own column. Without noise the
    counts are exact where no row is clipped, and the means are those of the
    values scaled to [0, 1]."""
    from fedvault.client._summary_dp import Declared, noisy_summary

    frame = pd.DataFrame(
        {
            "clinic": ["a", "b", "b", None],
            "x": [0.0, 5.0, 10.0, np.nan],
            "target": ["0", "1", "1", "0"],
        }
    )
    declared = Declared(bounds={"x": (0.0, 10.0)}, categories={"clinic": ("a", "b")})
    summary, _ = noisy_summary(
        frame, "target", declared=declared, sigma=0.0, rng=np.random.default_rng(0)
    )
    assert summary["rows"] == 4 and summary["labels"] == {"0": 2, "1": 2}
    assert summary["categorical"]["clinic"] == {
        "counts": {"a": 1, "b": 2},
        "missing": 1,
    }
    x = summary["numeric"]["x"]
    assert (x["n"], x["missing"]) == (3, 1)
    assert x["sum"] == pytest.approx(1.5)  # 0 + 0.5 + 1
