"""Lifetime epsilon from the ledger against the Opacus accountant; the budget holds."""

import hashlib

import pytest
from opacus.accountants import RDPAccountant

from fedvault.client.ledger import PrivacyLedger
from fedvault.client.policy import Decline, SitePolicy, check_request, plan_run_noise
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import BudgetExceededError
from fedvault.common.privacy import Step, epsilon_spent

pytestmark = pytest.mark.privacy

DATASET = "icu-2024"
DELTA = 1e-5


def _policy(epsilon_max, **extra):
    return SitePolicy(dataset_id=DATASET, epsilon_max=epsilon_max, delta=DELTA, **extra)


def _ledger(state, policy):
    return PrivacyLedger.for_policy(state, policy)


def _digest(run, rnd):
    return hashlib.sha256(f"{run}/{rnd}".encode()).hexdigest()


def _opacus(history):
    """Epsilon of one Opacus RDP accountant stepped through every step of history."""
    acct = RDPAccountant()
    for s in history:
        for _ in range(s.steps):
            acct.step(noise_multiplier=s.noise_multiplier, sample_rate=s.sample_rate)
    return acct.get_epsilon(delta=DELTA)


@pytest.mark.parametrize(
    ("sigma", "q", "steps", "golden"),
    [(1.0, 0.01, 1000, 2.1014), (1.5, 0.1, 50, 2.8489)],
)
def test_golden_epsilon_matches_the_opacus_accountant(
    tmp_path, sigma, q, steps, golden
):
    ledger = _ledger(tmp_path, _policy(100.0))
    record = ledger.append(
        "run-a",
        1,
        Step(noise_multiplier=sigma, sample_rate=q, steps=steps),
        1.0,
        _digest("a", 1),
    )
    expected = _opacus([Step(noise_multiplier=sigma, sample_rate=q, steps=steps)])
    assert record.epsilon == pytest.approx(expected, rel=1e-9)
    assert ledger.epsilon() == pytest.approx(expected, rel=1e-9)
    assert ledger.epsilon() == pytest.approx(golden, abs=1e-3)  # pinned for Opacus 1.6


def test_epsilon_across_rounds_and_two_runs_equals_one_accountant(tmp_path):
    policy = _policy(50.0)
    plan = [
        ("run-a", Step(noise_multiplier=1.1, sample_rate=0.05, steps=20), 3),
        ("run-b", Step(noise_multiplier=0.9, sample_rate=0.1, steps=10), 2),
    ]
    executed = []
    for run_id, step, rounds in plan:
        for rnd in range(1, rounds + 1):
            ledger = _ledger(tmp_path, policy)  # a fresh ClientApp process per round
            record = ledger.append(run_id, rnd, step, 1.0, _digest(run_id, rnd))
            executed.append(step)
            assert record.epsilon == pytest.approx(_opacus(executed), rel=1e-9)
    lifetime = _ledger(tmp_path, policy).epsilon()
    assert lifetime == pytest.approx(_opacus(executed), rel=1e-9)
    run_a_alone = epsilon_spent(executed[:3], delta=DELTA)
    assert run_a_alone < lifetime  # the second run spends on top of the first


def test_the_last_allowed_round_trains_and_the_next_is_declined(tmp_path):
    step = Step(noise_multiplier=1.0, sample_rate=0.1, steps=10)
    allowed = 4
    # exactly 4 rounds' worth, as the ledger composes them (equal steps added up)
    budget = epsilon_spent(
        [Step(noise_multiplier=1.0, sample_rate=0.1, steps=10 * allowed)], delta=DELTA
    )
    assert budget == pytest.approx(_opacus([step] * allowed), rel=1e-9)
    policy = _policy(budget)
    ledger = _ledger(tmp_path, policy)
    for rnd in range(1, allowed + 1):
        assert ledger.check_round(step, policy) is None
        ledger.append("run-a", rnd, step, 1.0, _digest("a", rnd), policy=policy)
    assert ledger.epsilon() == budget
    decision = _ledger(tmp_path, policy).check_round(step, policy)
    assert isinstance(decision, Decline)
    assert decision.reason == "budget"
    assert f"> budget {budget:g}" in decision.detail
    with pytest.raises(BudgetExceededError):
        ledger.append("run-a", allowed + 1, step, 1.0, _digest("a", 5), policy=policy)
    assert len(ledger.records()) == allowed


def test_a_second_run_continues_from_the_remaining_budget(tmp_path):
    policy = _policy(3.0, min_noise_multiplier=0.5)
    fresh = plan_run_noise(
        _ledger(tmp_path / "fresh", policy), policy, sample_rate=0.1, steps_this_run=50
    )
    ledger = _ledger(tmp_path, policy)
    first = plan_run_noise(ledger, policy, sample_rate=0.1, steps_this_run=50)
    assert first == fresh
    for rnd in range(1, 6):
        ledger.append(
            "run-a",
            rnd,
            Step(noise_multiplier=first, sample_rate=0.1, steps=10),
            1.0,
            _digest("a", rnd),
        )
    assert ledger.epsilon() <= policy.epsilon_max

    ledger = _ledger(tmp_path, policy)  # the next run, a new process
    remaining = policy.epsilon_max - ledger.epsilon()
    second = plan_run_noise(ledger, policy, sample_rate=0.1, steps_this_run=50)
    assert second > first  # the history already spent part of the budget
    after = ledger.projected_epsilon(
        Step(noise_multiplier=second, sample_rate=0.1, steps=50)
    )
    assert after <= policy.epsilon_max
    # tight: the plan leaves unused less than 1% of what was left
    assert policy.epsilon_max - after <= 0.01 * remaining


def test_a_run_cannot_raise_the_budget(tmp_path):
    policy = _policy(2.0)
    ledger = _ledger(tmp_path, policy)
    asked = plan_run_noise(
        ledger,
        policy,
        sample_rate=0.1,
        steps_this_run=40,
        target_epsilon_this_run=100.0,
    )
    own = plan_run_noise(ledger, policy, sample_rate=0.1, steps_this_run=40)
    assert asked == own
    assert (
        ledger.projected_epsilon(
            Step(noise_multiplier=asked, sample_rate=0.1, steps=40)
        )
        <= policy.epsilon_max
    )


def test_a_run_may_ask_for_less_than_the_budget(tmp_path):
    policy = _policy(5.0)
    ledger = _ledger(tmp_path, policy)
    sigma = plan_run_noise(
        ledger, policy, sample_rate=0.1, steps_this_run=40, target_epsilon_this_run=1.0
    )
    assert (
        epsilon_spent(
            [Step(noise_multiplier=sigma, sample_rate=0.1, steps=40)], delta=DELTA
        )
        <= 1.0
    )


def test_a_run_cannot_lower_the_noise_below_the_policy(tmp_path):
    policy = _policy(50.0, min_noise_multiplier=0.9)
    ledger = _ledger(tmp_path, policy)
    sigma = plan_run_noise(
        ledger, policy, sample_rate=0.1, steps_this_run=10, target_epsilon_this_run=1e3
    )
    assert sigma == 0.9  # the budget would allow far less noise; the floor holds
    too_little = Step(noise_multiplier=0.5, sample_rate=0.1, steps=10)
    decision = ledger.check_round(too_little, policy)
    assert decision == Decline(
        "policy", "noise multiplier 0.5 is below the site's minimum 0.9"
    )
    assert check_request(policy, TrainingConfig(noise_multiplier=0.5)) == Decline(
        "policy", "noise multiplier 0.5 is below the site's minimum 0.9"
    )


def test_the_run_noise_is_reused_after_a_restart(tmp_path):
    policy = _policy(4.0)
    ledger = _ledger(tmp_path, policy)
    sigma = plan_run_noise(ledger, policy, sample_rate=0.1, steps_this_run=30)
    assert ledger.planned_noise("run-a") is None
    ledger.append(
        "run-a",
        1,
        Step(noise_multiplier=sigma, sample_rate=0.1, steps=10),
        1.0,
        _digest("a", 1),
    )
    assert _ledger(tmp_path, policy).planned_noise("run-a") == sigma


def test_planning_on_a_spent_budget_raises(tmp_path):
    step = Step(noise_multiplier=1.0, sample_rate=0.1, steps=10)
    policy = _policy(epsilon_spent([step], delta=DELTA))
    ledger = _ledger(tmp_path, policy)
    ledger.append("run-a", 1, step, 1.0, _digest("a", 1))
    with pytest.raises(BudgetExceededError, match="budget spent"):
        plan_run_noise(ledger, policy, sample_rate=0.1, steps_this_run=10)


@pytest.mark.timeout(120)  # a hang guard: before the fix this search never returned
def test_a_huge_run_target_the_floor_already_meets_needs_no_search(tmp_path):
    """epsilon 1000 within a budget of 2000 with PRV: the site's smallest noise
    already meets it, so sigma is that floor (issue 12, case 10)."""
    policy = SitePolicy(
        dataset_id="bc",
        epsilon_max=2000.0,
        delta=1e-5,
        min_noise_multiplier=0.3,
        accountant="prv",
    )
    ledger = PrivacyLedger.for_policy(tmp_path, policy)
    sigma = plan_run_noise(
        ledger,
        policy,
        sample_rate=0.35,
        steps_this_run=30,
        target_epsilon_this_run=1000.0,
    )
    assert sigma == 0.3
