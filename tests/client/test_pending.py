"""A site that holds runs for its operator ([approval] hold = true): the real
ClientApp declines a run nobody approved with a `held:` policy decline before any
data is read and records its settings (0600); `client pending` lists it, `client
plan RUN_ID` prices it, `client approve RUN_ID [--reject]` decides, in a
hash-chained log that the site verifies before it believes a decision."""

import json
import stat

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from fedvault.client import admission
from fedvault.client.app import app as client_app
from fedvault.client.client_cli import client_app as cli
from fedvault.common.config import TrainingConfig
from fedvault.common.data import default_dataset
from fedvault.common.protocol import STATS_MESSAGE

SITE = (
    '[site]\nname = "hospital-a"\ncoordinator = "127.0.0.1:9092"\n'
    'state-dir = "state"\ndata = "rows.csv"\ninsecure = true\n\n'
    '[privacy]\ndataset-id = "bc"\nepsilon-max = 4.0\ndelta = 1e-5\n'
    "min-noise-multiplier = 0.3\n\n[approval]\nhold = true\n"
)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture
def site(tmp_path):
    default_dataset().to_csv(tmp_path / "rows.csv", index=False)
    (tmp_path / "state").mkdir()
    config = tmp_path / "site.toml"
    config.write_text(SITE)
    return config


@pytest.fixture
def reads(monkeypatch):
    calls = []
    real = admission.load_site_data
    monkeypatch.setattr(
        admission,
        "load_site_data",
        lambda *a, **k: calls.append(a) or real(*a, **k),
    )
    return calls


def _stats(site, run_id=7):
    run_config = TrainingConfig(rounds=3, epsilon=2.0).to_run_config()
    run_config |= {"target": "target", "run-key": "key-7"}
    node = {
        "site-name": "hospital-a",
        "data": str(site.parent / "rows.csv"),
        "state": str(site.parent / "state"),
        "policy": str(site),
    }
    context = Context(
        run_id=run_id,
        node_id=1,
        node_config=node,
        state=RecordDict(),
        run_config=run_config,
    )
    message = Message(RecordDict(), dst_node_id=1, message_type=STATS_MESSAGE)
    return client_app(message, context).content


def _run(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def test_a_held_run_waits_for_the_operator_and_runs_once_approved(site, reads):
    decline = _stats(site).config_records["decline"]
    assert str(decline["reason"]) == "policy"
    assert str(decline["detail"]) == (
        "held: waiting for the site operator's approval (fedvault client approve 7)"
    )
    assert reads == []
    record = site.parent / "state" / "pending" / "7.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert json.loads(record.read_text())["settings"]["run-key"] == "key-7"

    listed = _run("pending", "--config", site, "--format", "json")
    assert listed.exit_code == 0, listed.output
    [held] = json.loads(listed.stdout)["pending"]
    assert held["run-id"] == "7" and held["settings"]["epsilon"] == 2.0
    text = _run("pending", "--config", site)
    assert "run 7 (run key key-7)" in text.stdout and "rounds = 3" in text.stdout

    plan = _run("plan", "7", "--config", site, "--format", "json")
    assert plan.exit_code == 0, plan.output
    doc = json.loads(plan.stdout)
    assert doc["rounds"] == 3 and doc["decline"] is None
    assert doc["sigma"] > 0 and 0 < doc["run_epsilon"] <= 2.0

    approved = _run("approve", "7", "--config", site)
    assert approved.exit_code == 0, approved.output
    assert "run 7 approved" in approved.stdout
    content = _stats(site)
    assert "decline" not in content.config_records
    assert content.config_records["site"]["summary"]
    assert reads
    assert (
        json.loads(_run("pending", "--config", site, "--format", "json").stdout)[
            "pending"
        ]
        == []
    )
    log = (site.parent / "state" / "approvals.jsonl").read_text().splitlines()
    assert [json.loads(line)["decision"] for line in log] == ["approved"]


def test_a_rejected_run_and_a_damaged_approval_log_are_declined(site):
    _stats(site, run_id=8)
    assert _run("approve", "8", "--config", site, "--reject").exit_code == 0
    detail = str(_stats(site, run_id=8).config_records["decline"]["detail"])
    assert detail == "the site's operator rejected the run"

    _stats(site, run_id=9)
    assert _run("approve", "9", "--config", site).exit_code == 0
    log = site.parent / "state" / "approvals.jsonl"
    log.write_text(log.read_text().replace('"rejected"', '"approved"'))
    detail = str(_stats(site, run_id=9).config_records["decline"]["detail"])
    assert "approval log does not verify" in detail


def test_deciding_on_a_run_that_is_not_held_changes_nothing(site):
    result = _run("approve", "12", "--config", site)
    assert result.exit_code == 2
    assert "no run 12 is held at this site" in result.output
    assert not (site.parent / "state" / "approvals.jsonl").exists()
    plan = _run("plan", "12", "--config", site)
    assert plan.exit_code == 2
    assert "no such study file, and no run 12 is held" in plan.output
