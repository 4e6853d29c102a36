"""The site's DP state survives rounds (fresh ClientApp each time) via Context.state."""

import pytest
from flwr.app import Context, RecordDict

from fedvault.client.dp_state import DpState
from fedvault.client.training import Schedule
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import BudgetExceededError
from fedvault.common.privacy import Step, epsilon_spent

pytestmark = pytest.mark.privacy


def _context():
    return Context(
        run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={}
    )


def test_history_survives_fresh_loads_and_composes_like_one_accountant():
    settings = TrainingConfig(rounds=4, local_epochs=2, epsilon=2.0)
    schedule = Schedule(sample_rate=0.2, steps_per_epoch=5)
    context = _context()
    per_round = []
    for _ in range(4):
        state = DpState.load(context, settings, schedule)  # as a fresh ClientApp would
        state.check_round_fits()
        step = Step(state.sigma, schedule.sample_rate, state.steps_per_round)
        state.record(step)
        state.save(context)
        per_round.append(state.epsilon())
    one_accountant = epsilon_spent(
        [Step(state.sigma, 0.2, 4 * 2 * 5)], delta=settings.delta
    )
    assert per_round[-1] == pytest.approx(one_accountant, rel=1e-9)
    assert per_round == sorted(per_round)
    assert per_round[-1] <= settings.epsilon


def test_noise_is_planned_once_per_run():
    settings = TrainingConfig(rounds=3)
    schedule = Schedule(sample_rate=0.25, steps_per_epoch=4)
    context = _context()
    first = DpState.load(context, settings, schedule)
    first.save(context)
    again = DpState.load(context, settings, schedule)
    assert again.sigma == first.sigma


def test_the_round_after_the_planned_ones_is_declined():
    settings = TrainingConfig(rounds=3, epsilon=1.0)
    schedule = Schedule(sample_rate=0.25, steps_per_epoch=4)
    context = _context()
    for _ in range(3):
        state = DpState.load(context, settings, schedule)
        state.check_round_fits()
        state.record(Step(state.sigma, 0.25, state.steps_per_round))
        state.save(context)
    state = DpState.load(context, settings, schedule)
    with pytest.raises(BudgetExceededError, match="budget"):
        state.check_round_fits()
