"""The site, not the coordinator, decides: policy + ledger, round by round."""

from pathlib import Path

import pytest

from fedvault.client.budget import SiteBudget
from fedvault.client.policy import Decline
from fedvault.common.config import TrainingConfig
from fedvault.common.privacy import Schedule, Step, epsilon_spent

pytestmark = pytest.mark.privacy

SCHEDULE = Schedule(sample_rate=0.2, steps_per_epoch=5)


def _policy(folder: Path, **over) -> Path:
    values = {
        "dataset-id": "icu",
        "epsilon-max": 3.0,
        "delta": 1e-5,
        "max-grad-norm": 1.0,
        "min-noise-multiplier": 0.5,
    } | over
    lines = [
        f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}"
        for k, v in values.items()
    ]
    path = folder / "site.toml"
    path.write_text("[privacy]\n" + "\n".join(lines).replace("'", '"') + "\n")
    return path


def _open(tmp_path, run_id="run-1", **settings):
    budget = SiteBudget.open(
        policy_file=tmp_path / "site.toml",
        state_dir=tmp_path,
        run_id=run_id,
        settings=TrainingConfig(**settings),
    )
    assert isinstance(budget, SiteBudget)
    return budget


def _train_rounds(budget: SiteBudget, rounds: int) -> list[float]:
    eps = []
    for r in range(1, rounds + 1):
        plan = budget.plan_round(SCHEDULE)
        assert isinstance(plan, Step), plan
        eps.append(budget.record(r, plan, f"{r:064x}").epsilon)
    return eps


def test_planned_run_spends_at_most_its_target_and_reuses_sigma(tmp_path):
    _policy(tmp_path)
    budget = _open(tmp_path, rounds=4, epsilon=2.0)
    eps = _train_rounds(budget, 4)
    assert eps == sorted(eps) and eps[-1] <= 2.0
    sigmas = {r.noise_multiplier for r in budget.ledger.records()}
    assert len(sigmas) == 1  # planned once per run, even across fresh opens
    again = _open(tmp_path, rounds=4, epsilon=2.0)
    assert again.ledger.planned_noise("run-1") == sigmas.pop()


def test_lifetime_composes_across_runs_like_one_accountant(tmp_path):
    _policy(tmp_path, **{"epsilon-max": 6.0})
    first = _open(tmp_path, run_id="a", rounds=3, epsilon=2.0)
    _train_rounds(first, 3)
    second = _open(tmp_path, run_id="b", rounds=3, epsilon=2.0)
    figures = None
    for r in range(1, 4):
        plan = second.plan_round(SCHEDULE)
        assert isinstance(plan, Step)
        figures = second.record(r, plan, f"{r:064x}")
    history = [rec.step for rec in second.ledger.records()]
    assert len(history) == 6
    # the figures count the run's validation releases still to come
    _, future = second._planned_releases()
    assert figures.epsilon_lifetime == pytest.approx(
        epsilon_spent([*history, *future], delta=1e-5), rel=1e-9
    )
    assert figures.epsilon < figures.epsilon_lifetime <= 6.0


def test_declines_exactly_at_the_boundary(tmp_path):
    _policy(tmp_path, **{"epsilon-max": 2.0})
    budget = _open(tmp_path, rounds=50, noise_multiplier=3.0, epsilon=100.0)
    fits = max(
        k
        for k in range(1, 50)
        if epsilon_spent(
            [Step(noise_multiplier=3.0, sample_rate=0.2, steps=5 * k)], delta=1e-5
        )
        <= 2.0
    )
    trained = _train_rounds(budget, fits)
    assert trained[-1] <= 2.0
    decline = budget.plan_round(SCHEDULE)
    assert isinstance(decline, Decline) and decline.reason == "budget"


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"noise_multiplier": 0.2}, "below the site's minimum"),
        ({"max_grad_norm": 5.0}, "exceeds the site's maximum"),
    ],
)
def test_run_config_cannot_weaken_the_policy(tmp_path, settings, needle):
    _policy(tmp_path)
    decline = _open(tmp_path, **settings).plan_round(SCHEDULE)
    assert isinstance(decline, Decline) and decline.reason == "policy"
    assert needle in decline.detail


def test_run_config_cannot_raise_the_budget(tmp_path):
    _policy(tmp_path, **{"epsilon-max": 1.0})
    budget = _open(tmp_path, rounds=3, epsilon=50.0)
    eps = _train_rounds(budget, 3)
    assert budget.ledger.epsilon() <= 1.0 and eps[-1] <= 1.0


def test_a_tampered_ledger_blocks_training(tmp_path):
    _policy(tmp_path)
    _train_rounds(_open(tmp_path, rounds=3), 2)
    ledger_file = next((tmp_path / "ledger").glob("*.jsonl"))
    ledger_file.write_text(ledger_file.read_text().replace('"round":1', '"round":7'))
    result = SiteBudget.open(
        policy_file=tmp_path / "site.toml",
        state_dir=tmp_path,
        run_id="run-1",
        settings=TrainingConfig(),
    )
    assert isinstance(result, Decline) and "verification" in result.detail


def test_a_recorded_round_is_replayed_not_retrained(tmp_path):
    import torch

    _policy(tmp_path)
    budget = _open(tmp_path, rounds=3)
    plan = budget.plan_round(SCHEDULE)
    assert isinstance(plan, Step)
    update = {"w": torch.arange(4.0)}
    assert budget.replayable(1, global_hash="g1") is None  # nothing trained yet
    budget.record(1, plan, "ab" * 32)
    budget.keep(1, global_hash="g1", update=update, metrics={"loss": 0.5})
    again = _open(tmp_path, rounds=3)  # after a restart: a fresh process
    kept = again.replayable(1, global_hash="g1")
    assert kept is not None
    got, metrics, recorded = kept
    assert torch.equal(got["w"], update["w"]) and metrics == {"loss": 0.5}
    assert recorded == "ab" * 32
    assert again.replayable(1, global_hash="other") is None  # another global model
    assert again.replayable(2, global_hash="g1") is None  # a round never trained
    assert len(again.ledger.records()) == 1  # nothing new spent
