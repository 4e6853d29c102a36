"""``fedvault client plan``: what a study would cost a site, from the site's own
policy, ledger and planning code, before it takes part (nothing is recorded)."""

import json

import pytest
from typer.testing import CliRunner

from fedvault.client.budget import SiteBudget
from fedvault.client.client_cli import client_app
from fedvault.client.ledger import PrivacyLedger
from fedvault.client.plan import plan_study
from fedvault.client.policy import load_policy
from fedvault.client.site_config import load_site_config
from fedvault.client.training import dp_schedule
from fedvault.common.config import TrainingConfig
from fedvault.common.data import default_dataset
from fedvault.common.privacy import Step

POLICY = (
    '[privacy]\ndataset-id = "bc"\nepsilon-max = 4.0\ndelta = 1e-5\n'
    "min-noise-multiplier = 0.3\nmax-grad-norm = 1.0\nmax-rounds = 10\n"
)


@pytest.fixture
def site(tmp_path):
    default_dataset().to_csv(tmp_path / "rows.csv", index=False)
    config = tmp_path / "site.toml"
    config.write_text(
        '[site]\nname = "hospital-a"\ncoordinator = "127.0.0.1:9092"\n'
        'state-dir = "state"\ndata = "rows.csv"\ninsecure = true\n\n' + POLICY
    )
    return config


def _study(tmp_path, **training):
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in training.items())
    path = tmp_path / "study.toml"
    path.write_text(f'[coordinator]\ntarget = "target"\n\n[training]\n{lines}')
    return path


def _ledger(site):
    cfg = load_site_config(site)
    return PrivacyLedger.for_policy(cfg.state_dir, load_policy(site))


def test_a_study_within_the_budget_is_planned_as_the_site_would_run_it(tmp_path, site):
    study = _study(tmp_path, rounds=3, epsilon=2.0)
    result = plan_study(load_site_config(site), study)
    assert result.decline is None
    # the same sigma the site's budget plans for the run's first round
    cfg = load_site_config(site)
    settings = TrainingConfig(rounds=3, epsilon=2.0)
    budget = SiteBudget.open(
        policy_file=site, state_dir=cfg.state_dir, run_id="x", settings=settings
    )
    assert isinstance(budget, SiteBudget)
    rows = result.rows
    assert rows is not None and 0 < rows < len(default_dataset())
    step = budget.plan_round(dp_schedule(rows, settings.batch_size))
    assert isinstance(step, Step)
    assert result.sigma == step.noise_multiplier
    assert result.run_epsilon is not None and 1.5 < result.run_epsilon <= 2.0
    assert result.left == pytest.approx(4.0 - result.lifetime_after)
    assert _ledger(site).records() == []  # nothing recorded


def test_what_is_already_spent_shrinks_what_is_left(tmp_path, site):
    study = _study(tmp_path, rounds=3, epsilon=2.0)
    fresh = plan_study(load_site_config(site), study)
    ledger = _ledger(site)
    step = Step(noise_multiplier=2.0, sample_rate=0.05, steps=50)
    ledger.append("earlier", 1, step, 1.0, "0" * 64)
    spent = plan_study(load_site_config(site), study)
    assert spent.spent > 0, spent
    assert spent.decline is None, spent.decline
    assert spent.left < fresh.left


@pytest.mark.parametrize(
    ("training", "reason", "words"),
    [
        ({"rounds": 20}, "policy", "at most 10"),
        ({"noise-multiplier": 0.1}, "policy", "below the site's minimum"),
        ({"rounds": 5, "epsilon": 6.0, "noise-multiplier": 0.35}, "budget", "lifetime"),
    ],
    ids=["rounds", "noise", "budget"],
)
def test_a_study_the_site_would_decline_says_why(
    tmp_path, site, training, reason, words
):
    result = plan_study(load_site_config(site), _study(tmp_path, **training))
    assert result.decline is not None
    assert result.decline.reason == reason
    assert words in result.decline.detail


def test_cli_prints_the_plan_and_json(tmp_path, site):
    study = _study(tmp_path, rounds=3, epsilon=2.0)
    runner = CliRunner()
    text = runner.invoke(client_app, ["plan", str(study), "--config", str(site)])
    assert text.exit_code == 0, text.output
    assert "noise multiplier (sigma):" in text.stdout
    assert "the site would take part" in text.stdout
    shown = runner.invoke(
        client_app, ["plan", str(study), "--config", str(site), "--format", "json"]
    )
    doc = json.loads(shown.stdout)
    assert doc["decline"] is None and doc["epsilon_max"] == 4.0
    bad = runner.invoke(
        client_app, ["plan", str(tmp_path / "nope.toml"), "--config", str(site)]
    )
    assert bad.exit_code == 2
    assert len(bad.output.strip().splitlines()) == 1


def test_a_study_of_unapproved_or_missing_columns_is_declined(tmp_path, site):
    with site.open("a") as handle:
        handle.write('\n[approval]\ncolumns = ["mean radius", "blood type"]\n')
    runner = CliRunner()
    study = _study(tmp_path, rounds=3, features=["mean radius", "mean area"])
    text = runner.invoke(client_app, ["plan", str(study), "--config", str(site)])
    assert text.exit_code == 0, text.output
    assert "feature columns: mean radius, mean area (schema hash sha256:" in text.stdout
    assert "DECLINE (policy): the run trains on column 'mean area'" in text.stdout
    every = plan_study(load_site_config(site), _study(tmp_path, rounds=3))
    assert every.decline is not None and "column 'mean texture' too" in str(
        every.decline.detail
    )
    missing = _study(tmp_path, rounds=3, features=["mean radius", "blood type"])
    result = plan_study(load_site_config(site), missing)
    assert result.decline is not None and result.decline.reason == "data"
    assert "'blood type'" in result.decline.detail
    approved = plan_study(
        load_site_config(site), _study(tmp_path, rounds=3, features=["mean radius"])
    )
    assert approved.decline is None and approved.sigma is not None
