"""A site's DP-SGD state for one run: its noise multiplier and executed steps.

Flower builds a fresh ClientApp for every message, so nothing in Python memory lasts
between rounds. The noise multiplier (planned once) and the accountant history (every
step executed) are kept in the run's ``Context.state``, which Flower keeps per node for
the whole run; every epsilon reported is computed from that history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Context

from fedvault.client.training import Schedule
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import BudgetExceededError
from fedvault.common.privacy import (
    Step,
    epsilon_spent,
    history_from_json,
    history_to_json,
    plan_noise,
)

STATE_KEY = "fedvault.dp"


@dataclass
class DpState:
    """Noise multiplier, schedule and executed history of one site in one run."""

    settings: TrainingConfig
    schedule: Schedule
    sigma: float
    history: list[Step] = field(default_factory=list)

    @property
    def steps_per_round(self) -> int:
        return self.schedule.steps_per_epoch * self.settings.local_epochs

    @classmethod
    def load(
        cls, context: Context, settings: TrainingConfig, schedule: Schedule
    ) -> DpState:
        """Restore the state of earlier rounds, or plan the noise for the whole run.

        Noise is planned once, for exactly ``rounds x local_epochs x steps_per_epoch``
        steps at the loader's sampling rate, so that training in every round spends at
        most the target epsilon.
        """
        if STATE_KEY in context.state:
            record = context.state[STATE_KEY]
            if not isinstance(record, ConfigRecord):
                raise TypeError(f"context state {STATE_KEY!r} is not a ConfigRecord")
            return cls(
                settings=settings,
                schedule=schedule,
                sigma=float(record["sigma"]),  # type: ignore[arg-type]
                history=history_from_json(str(record["history"])),
            )
        sigma = plan_noise(
            target_epsilon=settings.epsilon,
            delta=settings.delta,
            sample_rate=schedule.sample_rate,
            steps=settings.rounds * settings.local_epochs * schedule.steps_per_epoch,
            accountant=settings.accountant,
        )
        return cls(settings=settings, schedule=schedule, sigma=sigma)

    def epsilon(self, extra: list[Step] | None = None) -> float:
        return epsilon_spent(
            [*self.history, *(extra or [])],
            delta=self.settings.delta,
            accountant=self.settings.accountant,
        )

    def check_round_fits(self) -> None:
        """Raise :class:`BudgetExceededError` if one more round would pass budget."""
        planned = Step(self.sigma, self.schedule.sample_rate, self.steps_per_round)
        projected = self.epsilon([planned])
        if projected > self.settings.epsilon * (1 + 1e-9):
            raise BudgetExceededError(
                f"one more round would spend epsilon={projected:.3f} "
                f"> budget {self.settings.epsilon:g} at delta={self.settings.delta:g}"
            )

    def record(self, step: Step) -> None:
        self.history.append(step)

    def save(self, context: Context) -> None:
        context.state[STATE_KEY] = ConfigRecord(
            {"sigma": self.sigma, "history": history_to_json(self.history)}
        )
