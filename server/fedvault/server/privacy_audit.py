"""``fedvault privacy audit``: an empirical lower bound on epsilon beside the
accountant's upper bound, from one simulated federation per configuration.

The one-run audit of Steinke, Nasr and Jagielski (NeurIPS 2023; the bound is in
:mod:`fedvault.server.audit_bound`), black-box, on the input space:

1. m canaries are drawn: rows whose every numeric feature is uniform over that
   column's range in the data (so each lies off the data's correlated manifold and
   far from the others) and whose label is a fair coin (so no rule learnt from the
   real rows or from the other canaries predicts it). Each canary goes to one site
   (round robin) and is *included*, independently, with probability 1/2.
2. ``fedvault simulate`` runs the federation (the real ServerApp, ClientApp and
   DP-SGD) with every included canary added to its site's training rows after the
   site's own train/validation split (so the rest of each site's data is the same
   whichever canaries are in).
3. The released model scores each canary by its loss on the canary's label; the
   auditor guesses the ``guess_in`` lowest-loss canaries "included" (k+ in the
   paper), the ``guess_out`` highest-loss ones "excluded" (k-), and abstains on the
   rest. The number of right guesses gives the lower bound at the sites' delta.
   By default every guess is "excluded": a canary the model gets badly wrong was
   almost surely not trained on, while a low loss tells less, since about half of
   the excluded canaries' random labels agree with what the model predicts anyway.

A DP run must show a lower bound at most its accountant's epsilon (a larger one
would be evidence of a privacy bug, up to the audit's 1 - confidence chance of a
false alarm); the ``--no-dp`` run, trained on the same canaries, shows how much the
same attack finds without DP. The guess counts are fixed before training: choosing
them after seeing the scores would void the confidence.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedvault.common.config import TrainingConfig
from fedvault.common.data import DEFAULT_TARGET, default_dataset
from fedvault.common.errors import ConfigError
from fedvault.server import simulate as sim
from fedvault.server import trained
from fedvault.server.audit_bound import epsilon_lower_bound
from fedvault.server.rundir import check_new_run_dir


@dataclass(frozen=True, kw_only=True)
class AuditSettings:
    """One audit: the federation's size and training, and the canary game.

    ``epsilons``: one DP run per target epsilon, plus one ``--no-dp`` run when
    ``no_dp``."""

    canaries: int = 200
    guess_in: int = 0
    guess_out: int = 40
    sites: int = 3
    rounds: int = 10
    local_epochs: int = 3
    epsilons: tuple[float, ...] = (3.0,)
    no_dp: bool = True
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("canaries", "sites", "rounds", "local_epochs"):
            if getattr(self, name) < 1:
                key = name.replace("_", "-")
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, name)}")
        if min(self.guess_in, self.guess_out) < 0 or self.guesses < 1:
            raise ConfigError(
                f"guess-in, guess-out: must be >= 0 and not both 0, got "
                f"{self.guess_in} and {self.guess_out}"
            )
        if self.guesses > self.canaries:
            raise ConfigError(
                f"guess-in, guess-out: {self.guesses} guesses in all, more than "
                f"--canaries ({self.canaries})"
            )
        if any(not 0 < e < math.inf for e in self.epsilons):
            raise ConfigError(f"epsilon: must be > 0, got {list(self.epsilons)}")
        if len(set(self.epsilons)) < len(self.epsilons):
            raise ConfigError(f"epsilon: given twice in {list(self.epsilons)}")
        if self.sites < 2:
            raise ConfigError(f"sites: must be >= 2 (a federation), got {self.sites}")
        if not self.epsilons and not self.no_dp:
            raise ConfigError("epsilon: nothing to audit (no --epsilon and --dp-only)")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence: must be in (0, 1), got {self.confidence}")

    @property
    def guesses(self) -> int:
        """r: the guesses made (the other canaries are abstained on)."""
        return self.guess_in + self.guess_out


@dataclass(frozen=True)
class CanaryGame:
    """The canaries, which are in (drawn before training) and which site holds each."""

    rows: pd.DataFrame
    included: np.ndarray
    site: np.ndarray


@dataclass(frozen=True, kw_only=True)
class AuditResult:
    """One configuration's audit: the accountant's epsilon (None without DP, over the
    sites the largest, since each canary is protected by its own site's epsilon),
    the delta both are stated at, and the game's counts and lower bound."""

    configuration: str
    accountant_epsilon: float | None
    delta: float
    canaries: int
    guesses: int
    correct: int
    empirical_epsilon: float
    accuracy: float | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def draw_canaries(
    frame: pd.DataFrame, target: str, *, count: int, sites: int, seed: int
) -> CanaryGame:
    """Draw ``count`` canaries from the ranges of ``frame``'s columns (numeric:
    uniform over [min, max]; others: a value seen in the column), each with a
    fair-coin label from the target's values, a site (round robin) and a fair-coin
    inclusion bit, all from one generator seeded by ``seed``."""
    rng = np.random.default_rng([seed, 0xA0D17])
    columns: dict[str, Any] = {}
    for name in frame.columns:
        column = frame[name].dropna()
        if name == target or not pd.api.types.is_numeric_dtype(column):
            values = np.sort(column.unique())
            columns[name] = values[rng.integers(0, len(values), size=count)]
        else:
            low, high = float(column.min()), float(column.max())
            columns[name] = rng.uniform(low, high, size=count)
    rows = pd.DataFrame(columns)[list(frame.columns)]
    included = rng.random(count) < 0.5
    return CanaryGame(rows=rows, included=included, site=np.arange(count) % sites)


def site_canaries(game: CanaryGame, names: list[str]) -> dict[str, pd.DataFrame]:
    """The included canaries of each site (sites with none are left out)."""
    held = {}
    for index, name in enumerate(names):
        rows = game.rows[game.included & (game.site == index)]
        if len(rows):
            held[name] = rows.reset_index(drop=True)
    return held


def canary_losses(model: trained.TrainedModel, rows: pd.DataFrame) -> np.ndarray:
    """Each canary's cross-entropy loss under the released model."""
    x, _ = trained.features(model.prep, rows, source="canaries")
    proba = model.probabilities(x)
    labels = model.prep.encode_labels(rows[model.prep.target])
    picked = proba[np.arange(len(rows)), labels]
    losses: np.ndarray = -np.log(np.clip(picked, 1e-300, None))
    return losses


def count_correct(
    losses: np.ndarray, included: np.ndarray, *, guess_in: int, guess_out: int
) -> int:
    """Right guesses when the ``guess_in`` lowest losses are guessed included and
    the ``guess_out`` highest excluded (ties broken by canary index)."""
    order = np.argsort(losses, kind="stable")
    out = order[len(order) - guess_out :]
    return int(included[order[:guess_in]].sum() + (~included[out]).sum())


Poller = Callable[[str, Path], Callable[[], None] | None]


def run_audit(
    settings: AuditSettings, *, out: Path | None = None, poller: Poller | None = None
) -> list[AuditResult]:
    """Audit every configuration of ``settings`` (DP runs first, then ``--no-dp``),
    each in its own run folder under ``out`` (kept) or a temporary folder.

    ``poller(label, run_dir)`` may return an ``on_poll`` callback for that run.

    Raises:
        ConfigError: a run folder under ``out`` that exists and is not empty, or
            settings the simulation refuses (checked for every run before the
            first starts).
        FederationError: a simulated run that did not complete.
    """
    runs = [
        (_label(eps), _config(settings, dp=True, epsilon=eps))
        for eps in settings.epsilons
    ]
    if settings.no_dp:
        runs.append(
            ("no-dp", _config(settings, dp=False, epsilon=TrainingConfig.epsilon))
        )
    for label, cfg in runs:
        sim.prepare_data(cfg)
        if out is not None:
            check_new_run_dir(out / label)
    game = draw_canaries(
        default_dataset(),
        DEFAULT_TARGET,
        count=settings.canaries,
        sites=settings.sites,
        seed=settings.seed,
    )
    with tempfile.TemporaryDirectory(prefix="fedvault-audit-") as tmp:
        root = out if out is not None else Path(tmp)
        results = []
        for label, cfg in runs:
            run_dir = root / label
            on_poll = poller(label, run_dir) if poller is not None else None
            results.append(_audit_one(settings, game, label, cfg, run_dir, on_poll))
    return results


def _label(epsilon: float) -> str:
    return f"dp-eps{epsilon:g}"


def _config(
    settings: AuditSettings, *, dp: bool, epsilon: float
) -> sim.SimulationConfig:
    training = TrainingConfig(
        rounds=settings.rounds,
        local_epochs=settings.local_epochs,
        seed=settings.seed,
        dp=dp,
        epsilon=epsilon,
    )
    options = sim.SimulationOptions(sites=settings.sites)
    return sim.SimulationConfig(options, training, delta_given=False)


def _audit_one(
    settings: AuditSettings,
    game: CanaryGame,
    label: str,
    cfg: sim.SimulationConfig,
    run_dir: Path,
    on_poll: Callable[[], None] | None,
) -> AuditResult:
    """One simulated run with the included canaries, scored by its released model."""
    prepared = sim.prepare_data(cfg)
    names = [name for name, _ in prepared.sites]
    summary = sim.run(
        cfg, run_dir, on_poll=on_poll, canaries=site_canaries(game, names)
    )
    losses = canary_losses(trained.load(run_dir), game.rows)
    correct = count_correct(
        losses,
        game.included,
        guess_in=settings.guess_in,
        guess_out=settings.guess_out,
    )
    sites = summary.get("sites", {}).values()
    spent = [s["epsilon_spent"] for s in sites if s.get("epsilon_spent") is not None]
    deltas = [s["delta"] for s in sites if s.get("delta") is not None]
    delta = max(deltas) if cfg.training.dp and deltas else prepared.training.delta
    final = summary.get("final") or {}
    return AuditResult(
        configuration=label,
        accountant_epsilon=max(spent) if cfg.training.dp and spent else None,
        delta=delta,
        canaries=settings.canaries,
        guesses=settings.guesses,
        correct=correct,
        empirical_epsilon=epsilon_lower_bound(
            canaries=settings.canaries,
            guesses=settings.guesses,
            correct=correct,
            delta=delta,
            confidence=settings.confidence,
        ),
        accuracy=final.get("accuracy"),
    )
