"""The site decides: every message of a run is checked against the site's own policy
at the edge of the real ClientApp, before any data is read, and a request for less
protection than the policy allows is declined with a typed reason (issue 11, cases
1, 3 and 9)."""

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedvault.client import admission as client_module  # reads rows: run_data
from fedvault.client.app import app as client_app
from fedvault.client.budget import SiteBudget
from fedvault.common.config import TrainingConfig
from fedvault.common.data import default_dataset
from fedvault.common.models import build_model
from fedvault.common.preprocessing import merge_summaries, site_summary
from fedvault.common.privacy import Schedule, Step
from fedvault.common.protocol import STATS_MESSAGE, SiteStats

pytestmark = pytest.mark.privacy

POLICY = {
    "dataset-id": '"bc"',
    "epsilon-max": "1.0",
    "delta": "1e-5",
    "require-secure-aggregation": "false",
}


def _deployed_site(tmp_path, rows=240, **policy):
    """A deployed site's node config: its own data, state folder and policy."""
    data = tmp_path / "site.parquet"
    default_dataset().iloc[:rows].to_parquet(data, index=False)
    state = tmp_path / "state"
    state.mkdir()
    lines = [f"{k} = {v}" for k, v in (POLICY | policy).items()]
    (state / "site.toml").write_text("[privacy]\n" + "\n".join(lines) + "\n")
    return {"site-name": "st-mary", "data": str(data), "state": str(state)}


def _context(node_config, **training):
    run_config = TrainingConfig(**({"rounds": 2} | training)).to_run_config()
    run_config |= {"target": "target", "run-key": "run-1"}
    return Context(
        run_id=1,
        node_id=7,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config,
    )


def _message(kind):
    if kind == "stats":
        return Message(RecordDict(), dst_node_id=7, message_type=STATS_MESSAGE)
    prep = merge_summaries([site_summary(default_dataset(), "target")], "target")
    model = build_model("mlp", in_features=prep.num_features, num_classes=2)
    config = {"preprocessing": prep.to_json(), "server-round": 1}
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord(config)}
    )
    return Message(content, dst_node_id=7, message_type=kind)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    # The ServerApp runtime sets who "we" are; new instruction messages need it.
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _decline(reply):
    record = reply.content.config_records["decline"]
    return str(record["reason"]), str(record["detail"])


@pytest.fixture
def reads(monkeypatch):
    """Every time the ClientApp reads the site's rows."""
    calls = []
    real = client_module.load_site_data

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(client_module, "load_site_data", spy)
    return calls


WEAKER = [
    pytest.param({"dp": False}, "allow-non-private", id="dp-off"),
    pytest.param({"max_grad_norm": 2.0}, "clipping norm 2 exceeds", id="clipping"),
    pytest.param({"noise_multiplier": 0.3}, "0.3 is below", id="less-noise"),
    pytest.param({"rounds": 60}, "at most 50", id="more-rounds"),
    pytest.param({}, "requires secure aggregation", id="no-secagg"),
]


@pytest.mark.parametrize("kind", ["train", "stats", "evaluate"])
@pytest.mark.parametrize(("request_", "fragment"), WEAKER)
def test_a_weaker_request_is_declined_before_any_data_is_read(
    tmp_path, reads, kind, request_, fragment
):
    secagg_required = "secure aggregation" in fragment
    node = _deployed_site(
        tmp_path,
        **{
            "max-rounds": "50",
            "require-secure-aggregation": str(secagg_required).lower(),
        },
    )
    # every run here is in the clear (secagg off), as its messages are
    reply = client_app(_message(kind), _context(node, **request_))
    assert not reply.has_error()
    assert _decline(reply)[0] == "policy"
    assert fragment in _decline(reply)[1]
    assert reply.content.array_records == {}  # nothing of the model is sent
    assert reply.content.metric_records == {}
    assert reads == []  # the site's rows were never read
    if kind == "stats":
        stats = SiteStats.from_content(reply.content)
        assert stats.name == "st-mary" and stats.summary is None
    assert not (tmp_path / "state" / "ledger" / "bc.jsonl").exists()


def test_dp_off_trains_only_where_the_policy_allows_it(tmp_path, reads):
    node = _deployed_site(tmp_path, **{"allow-non-private": "true"})
    reply = client_app(_message("train"), _context(node, dp=False))
    assert not reply.has_error() and "decline" not in reply.content.config_records
    assert len(reply.content.array_records["arrays"]) > 0
    assert reads  # it trained (plain SGD, as its operator allowed)


def test_a_site_without_a_readable_policy_takes_part_in_nothing(tmp_path, reads):
    node = _deployed_site(tmp_path)
    (tmp_path / "state" / "site.toml").write_text("[privacy]\nepsilon-max = 1\n")
    reply = client_app(_message("train"), _context(node))
    reason, detail = _decline(reply)
    assert reason == "policy" and "missing key 'dataset-id'" in detail
    assert reads == []


@pytest.mark.parametrize("kind", ["train", "stats", "evaluate"])
def test_a_site_refuses_a_delta_not_below_one_over_its_rows(tmp_path, kind):
    node = _deployed_site(tmp_path, rows=240, delta="0.4")
    reply = client_app(_message(kind), _context(node, delta=1e-5))
    reason, detail = _decline(reply)
    # 240 rows, 15% held out for validation: n = 204 training rows
    assert reason == "policy"
    assert "delta 0.4 is not below 1/n" in detail and "n = 204" in detail
    assert not (tmp_path / "state" / "ledger" / "bc.jsonl").exists()


def test_the_sites_own_delta_is_used_whatever_the_run_asks(tmp_path):
    node = _deployed_site(tmp_path)
    reply = client_app(_message("train"), _context(node, delta=1e-6, accountant="prv"))
    metrics = reply.content.metric_records["metrics"]
    assert metrics["delta"] == 1e-5
    assert metrics["accountant-code"] == 1  # rdp, the site's policy
    assert metrics["noise-from-run-seed"] == 0  # a deployed site: OS entropy


def _spend(tmp_path, run_id, epsilon, rounds):
    budget = SiteBudget.open(
        policy_file=tmp_path / "state" / "site.toml",
        state_dir=tmp_path / "state",
        run_id=run_id,
        settings=TrainingConfig(rounds=rounds, epsilon=epsilon),
    )
    assert isinstance(budget, SiteBudget)
    return budget


def test_a_round_too_noisy_to_be_useful_is_declined_as_budget(tmp_path):
    _deployed_site(tmp_path)  # epsilon-max = 1; default max-noise-multiplier 10
    schedule = Schedule(sample_rate=1 / 7, steps_per_epoch=7)
    first = _spend(tmp_path, "first", epsilon=0.95, rounds=10)
    for r in range(1, 11):
        plan = first.plan_round(schedule)
        assert isinstance(plan, Step) and plan.noise_multiplier < 10
        first.record(r, plan, f"{r:064x}")
    spent = first.ledger.epsilon()
    assert 0.94 <= spent <= 0.95
    second = _spend(tmp_path, "second", epsilon=1.0, rounds=10)
    decision = second.plan_round(schedule)
    assert not isinstance(decision, Step)
    assert decision.reason == "budget"
    assert "too small for a useful round" in decision.detail
    assert "max-noise-multiplier 10" in decision.detail
    assert second.ledger.epsilon() == spent  # nothing spent on it


def test_stats_are_the_same_whatever_the_run_seed(tmp_path):
    """The coordinator picks the run's seed; the site picks its split (fixed per
    dataset version). Replaying the stats query under many seeds returns the same
    bytes each time, so the replay attack of issue 11 case 5 (least squares over
    sums of seed-dependent row subsets) gets one equation, not a system."""
    site = _deployed_site(tmp_path)
    answers = set()
    for seed in range(12):
        reply = client_app(_message("stats"), _context(site, seed=seed))
        stats = SiteStats.from_content(reply.content)
        assert stats.summary is not None
        answers.add(stats.summary)
    assert len(answers) == 1
