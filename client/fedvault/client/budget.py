"""A site's privacy budget for one run: its own policy and ledger, round by round.

The coordinator's run config *asks* (a per-run epsilon target, or a fixed noise
multiplier, a clipping norm); the site's policy file *decides*. Before each round the
site plans (sigma once per run), checks the policy and the ledger, and declines with
a typed reason when the round would break either. After training it appends the
round to its ledger *before* the update is sent. Every epsilon comes from the
accountant over the ledger's history (lifetime) or this run's records (run).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedvault.client import replay
from fedvault.client._ledger_cache import use_cache
from fedvault.client.ledger import PrivacyLedger
from fedvault.client.policy import (
    Decline,
    SitePolicy,
    check_request,
    load_policy,
    plan_run_noise,
)
from fedvault.client.releases import (
    EVAL_SUFFIX,
    SUMMARY_RUN,
    metric_sigma,
    release_step,
)
from fedvault.common.config import TrainingConfig
from fedvault.common.errors import BudgetExceededError, ConfigError, IntegrityError
from fedvault.common.privacy import Schedule, Step, epsilon_spent
from fedvault.common.protocol import DpFigures

POLICY_FILE = "site.toml"


class SiteBudget:
    """Policy + ledger of one site for one run."""

    def __init__(
        self,
        policy: SitePolicy,
        ledger: PrivacyLedger,
        run_id: str,
        settings: TrainingConfig,
        state_dir: Path | None = None,
    ) -> None:
        self.policy, self.ledger = policy, ledger
        self.run_id, self.settings = run_id, settings
        self.state_dir = state_dir

    @classmethod
    def open(
        cls,
        *,
        policy_file: Path,
        state_dir: Path,
        run_id: str,
        settings: TrainingConfig,
        policy: SitePolicy | None = None,
    ) -> SiteBudget | Decline:
        """Load the policy (unless given, already read from ``policy_file``) and
        open (verify) the ledger. A ledger that fails verification is a decline:
        the site trains nothing until it is fixed. Opacus' RDP curves are kept
        beside the ledger, authenticated with the site's key
        (:mod:`fedvault.client._ledger_cache`).

        Raises :class:`ConfigError` for a missing or invalid policy file.
        """
        policy = policy or load_policy(policy_file)
        try:
            use_cache(state_dir)
            ledger = PrivacyLedger.for_policy(state_dir, policy)
        except IntegrityError as exc:
            return Decline("policy", f"privacy ledger failed verification: {exc}")
        return cls(policy, ledger, run_id, settings, state_dir)

    def _run_history(self) -> list[Step]:
        """This run's steps and releases, with the site's summary releases (every
        run is computed from one: counted in each run's epsilon, in the lifetime
        epsilon once)."""
        mine = (self.run_id, self.run_id + EVAL_SUFFIX)
        return [
            r.step
            for r in self.ledger.records()
            if r.run_id in mine or r.run_id.startswith(SUMMARY_RUN + ":")
        ]

    def _planned_releases(self) -> tuple[list[Step], list[Step]]:
        """This run's releases besides DP-SGD: done (the summary, past validation
        counts: already in the ledger) and still to come (one validation release
        per remaining round)."""
        done = [
            r.step
            for r in self.ledger.records()
            if r.run_id.startswith(SUMMARY_RUN + ":")
            or r.run_id == self.run_id + EVAL_SUFFIX
        ]
        evals = sum(
            1 for r in self.ledger.records() if r.run_id == self.run_id + EVAL_SUFFIX
        )
        left = max(self.settings.rounds - evals, 0)
        sigma = metric_sigma(self.settings, self.policy)
        return done, [release_step(sigma)] * left

    def release(self, server_round: int, sigma: float, digest: str) -> Decline | None:
        """Charge one Gaussian release of this run's validation counts (sensitivity
        1 each, noise multiplier ``sigma``) to the ledger, or why not: the run's
        target or the lifetime budget would be passed."""
        step = release_step(sigma)
        refusal = self.ledger.check_round(step, self.policy)
        if refusal is not None:
            return refusal
        refusal = self._over_run_target(step, "releasing validation counts")
        if refusal is not None:
            return refusal
        try:
            self.ledger.append(
                self.run_id + EVAL_SUFFIX,
                server_round,
                step,
                1.0,
                digest,
                policy=self.policy,
            )
        except BudgetExceededError as exc:
            return Decline("budget", str(exc))
        return None

    def _sigma(self, schedule: Schedule) -> float:
        if self.settings.noise_multiplier > 0:
            return self.settings.noise_multiplier
        planned = self.ledger.planned_noise(self.run_id)
        if planned is not None:
            return planned
        steps = (
            self.settings.rounds * self.settings.local_epochs * schedule.steps_per_epoch
        )
        done, future = self._planned_releases()
        return plan_run_noise(
            self.ledger,
            self.policy,
            sample_rate=schedule.sample_rate,
            steps_this_run=steps,
            target_epsilon_this_run=self.settings.epsilon,
            prior=done,
            extra=future,
        )

    def plan_round(self, schedule: Schedule) -> Step | Decline:
        """The round's planned step (noise multiplier, sample rate, steps), computed
        once and passed as is to
        :func:`fedvault.client.training.train_private`, or why the site will not
        train it."""
        refusal = check_request(self.policy, self.settings)
        if refusal is not None:
            return refusal
        try:
            sigma = self._sigma(schedule)
        except BudgetExceededError as exc:
            return Decline("budget", str(exc))
        step = schedule.plan(noise_multiplier=sigma, epochs=self.settings.local_epochs)
        if sigma > self.policy.max_noise_multiplier:
            return self._useless(step)
        refusal = self.ledger.check_round(step, self.policy)
        if refusal is not None:
            return refusal
        return self._over_run_target(step, "the round") or step

    def _over_run_target(self, step: Step, what: str) -> Decline | None:
        """A ``budget`` decline when ``step`` after this run's history would pass
        the run's epsilon target, else None."""
        run_eps = self._epsilon([*self._run_history(), step])
        if run_eps <= self.settings.epsilon * (1 + 1e-9):
            return None
        return Decline(
            "budget",
            f"{what} would bring this run's epsilon to "
            f"{run_eps:.4f} > the run's target {self.settings.epsilon:g}",
        )

    def _useless(self, step: Step) -> Decline:
        spent, budget = self.ledger.epsilon(), self.policy.epsilon_max
        return Decline(
            "budget",
            f"the budget left is too small for a useful round: within this run's "
            f"epsilon {self.settings.epsilon:g} and the lifetime budget "
            f"({spent:.4f} of {budget:g} spent) its rounds need noise multiplier "
            f"{step.noise_multiplier:.3g} > the site's max-noise-multiplier "
            f"{self.policy.max_noise_multiplier:g}",
        )

    def record(
        self,
        server_round: int,
        step: Step,
        update_hash: str,
        *,
        noise_from_run_seed: bool = False,
    ) -> DpFigures:
        """Append the trained round to the ledger (raises BudgetExceededError and
        records nothing if another run spent the budget meanwhile); the site's
        figures after it, at its own delta and with its own accountant."""
        self.ledger.append(
            self.run_id,
            server_round,
            step,
            self.settings.max_grad_norm,
            update_hash,
            policy=self.policy,
        )
        # Figures of the whole run, with the validation releases still to come
        # (each round's evaluation follows its training reply).
        _, future = self._planned_releases()
        return DpFigures(
            epsilon=self._epsilon([*self._run_history(), *future]),
            epsilon_lifetime=self._epsilon([*self.ledger.history(), *future]),
            epsilon_budget=self.policy.epsilon_max,
            delta=self.policy.delta,
            noise_multiplier=step.noise_multiplier,
            sample_rate=step.sample_rate,
            accountant=self.policy.accountant,
            noise_from_run_seed=noise_from_run_seed,
        )

    def replayable(
        self, server_round: int, *, global_hash: str
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], str] | None:
        """This run's kept update for ``server_round`` if the ledger records that
        round as trained from the same global model (see :mod:`replay`), with the
        update hash the ledger holds for it (the caller checks the bytes match)."""
        done = [
            r
            for r in self.ledger.records()
            if r.run_id == self.run_id and r.round == server_round
        ]
        if not done or self.state_dir is None:
            return None
        kept = replay.find(
            self.state_dir, self.run_id, server_round, global_hash=global_hash
        )
        return None if kept is None else (*kept, done[-1].update_sha256)

    def keep(
        self,
        server_round: int,
        *,
        global_hash: str,
        update: dict[str, torch.Tensor],
        metrics: dict[str, float],
    ) -> None:
        if self.state_dir is not None:
            replay.keep(
                self.state_dir,
                self.run_id,
                server_round,
                global_hash=global_hash,
                update=update,
                metrics=metrics,
            )

    def _epsilon(self, history: list[Step]) -> float:
        return epsilon_spent(
            history, delta=self.policy.delta, accountant=self.policy.accountant
        )


def policy_path(state_dir: Path | None, policy: Path | None) -> tuple[Path, Path]:
    """Resolve the policy file and state folder of a site (policy defaults to
    ``STATE/site.toml``)."""
    if state_dir is None:
        raise ConfigError(
            "the site needs its state folder (state=DIR), which holds its policy "
            "and its privacy ledger"
        )
    return (policy or state_dir / POLICY_FILE), state_dir
