"""The accountant's cached RDP curves are authenticated with a key the site holds: a
forged cache never lowers an epsilon, and ``ledger verify`` reports it (issue 11,
case 7)."""

import hashlib
import json
import re
import stat

import pytest
from typer.testing import CliRunner

from fedvault.client.budget import SiteBudget
from fedvault.client.ledger_cli import ledger_app
from fedvault.common import _rdp
from fedvault.common.config import TrainingConfig
from fedvault.common.privacy import Schedule, Step, epsilon_spent, keep_curves_in

pytestmark = pytest.mark.privacy

SCHEDULE = Schedule(sample_rate=0.2, steps_per_epoch=5)


@pytest.fixture(autouse=True)
def _fresh_process():
    """Each test starts, and leaves, like a fresh site process: no curves in
    memory, no cache folder set."""
    keep_curves_in(None)
    _rdp.unit_rdp.cache_clear()
    yield
    keep_curves_in(None)
    _rdp.unit_rdp.cache_clear()


def _site(tmp_path):
    (tmp_path / "site.toml").write_text(
        '[privacy]\ndataset-id = "icu"\nepsilon-max = 3.0\ndelta = 1e-5\n'
    )
    return tmp_path


def _budget(state, run_id):
    budget = SiteBudget.open(
        policy_file=state / "site.toml",
        state_dir=state,
        run_id=run_id,
        settings=TrainingConfig(rounds=4, epsilon=2.0),
    )
    assert isinstance(budget, SiteBudget)
    return budget


def _train(budget, rounds):
    for r in range(1, rounds + 1):
        plan = budget.plan_round(SCHEDULE)
        assert isinstance(plan, Step), plan
        budget.record(r, plan, f"{r:064x}")


def _forge(state):
    """Every cached curve replaced by zeros with a recomputed (unkeyed) checksum,
    in each form a forger might try."""
    paths = sorted((state / "accountant").glob("rdp-*.json"))
    assert paths
    for path in paths:
        doc = json.loads(path.read_text())
        zeros = [0.0] * len(doc["curve"])
        text = json.dumps([doc["key"], zeros], sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()
        forged = {"key": doc["key"], "curve": zeros, "sha256": digest}
        forged["hmac"] = digest
        path.write_text(json.dumps(forged))
    return paths


def _true_epsilon(history):
    keep_curves_in(None)
    _rdp.unit_rdp.cache_clear()
    return epsilon_spent(history, delta=1e-5)


def test_a_forged_cache_does_not_reset_the_budget(tmp_path):
    state = _site(tmp_path)
    _train(_budget(state, "a"), rounds=4)
    key = state / "accountant.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    history = [r.step for r in _budget(state, "a").ledger.records()]
    spent = _true_epsilon(history)
    assert 1.9 < spent <= 2.0

    forged = _forge(state)
    _rdp.unit_rdp.cache_clear()  # a fresh ClientApp process, as in deployment
    again = _budget(state, "b")
    assert again.ledger.epsilon() == pytest.approx(spent, rel=1e-12)
    plan = again.plan_round(SCHEDULE)
    assert isinstance(plan, Step)
    # planned from the true lifetime: the whole run fits in the budget of 3
    assert epsilon_spent([*history, *[plan] * 4], delta=1e-5) <= 3.0
    figures = again.record(1, plan, f"{1:064x}")
    # with the validation-count releases the run still has to make
    _, future = again._planned_releases()
    assert figures.epsilon_lifetime == pytest.approx(
        _true_epsilon([*history, plan, *future]), rel=1e-12
    )
    # the curve of the history's (sigma, q) was recomputed and is authenticated again
    rewritten = [p for p in forged if json.loads(p.read_text())["curve"][5] > 0]
    assert rewritten and all("hmac" in json.loads(p.read_text()) for p in rewritten)


def test_ledger_verify_checks_the_cache(tmp_path):
    state = _site(tmp_path)
    _train(_budget(state, "a"), rounds=2)
    runner = CliRunner()
    args = ["verify", "--state", str(state), "--dataset", "icu"]
    ok = runner.invoke(ledger_app, args)
    assert ok.exit_code == 0
    assert re.search(r"accountant cache: [1-9]\d* curves authenticated", ok.stdout)

    _forge(state)
    bad = runner.invoke(ledger_app, args)
    assert bad.exit_code == 2
    assert "accountant cache" in bad.stderr and "failed authentication" in bad.stderr
    assert bad.stderr.count("\n") == 1

    # the same key authenticates the ledger's head: without it, verify names it
    (state / "accountant.key").unlink()
    missing = runner.invoke(ledger_app, args)
    assert missing.exit_code == 2
    assert "site key" in missing.stderr and "is missing" in missing.stderr
