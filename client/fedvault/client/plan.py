"""What a study would cost this site, before it takes part (``fedvault client
plan``): the site's own checks, budget and planning code, run on the study's
settings and the site's row count, with nothing trained and nothing recorded.

The study is the TOML a researcher submits (``[coordinator]`` target,
``[training]``). The figures are the ones the site's ClientApp would use: the
policy's and ``[approval]``'s checks (:func:`fedvault.client.admission.admit`'s),
the delta-against-rows check, and :meth:`fedvault.client.budget.SiteBudget.plan_round`
for the first round (sigma planned once per run from the lifetime budget and the
run's epsilon target); the epsilon of the whole run and the lifetime epsilon after
it are the accountant's, over the ledger's history and the run's steps.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedvault.client.approval import approve, run_schema_hash
from fedvault.client.budget import SiteBudget
from fedvault.client.policy import SitePolicy, check_request, check_rows, load_policy
from fedvault.client.site import (
    SiteSettings,
    data_columns,
    load_site_data,
    select_columns,
    site_settings,
)
from fedvault.client.site_config import SiteConfig
from fedvault.client.training import dp_schedule
from fedvault.common.config import TrainingConfig, parse_fields, read_toml
from fedvault.common.errors import ConfigError
from fedvault.common.privacy import Step, epsilon_spent
from fedvault.common.protocol import RUN_TARGET, Decline


@dataclass(frozen=True)
class RunPlan:
    """What the study would cost the site (``None``: not computed, because the
    site declines first or the study is not private)."""

    site: str
    rounds: int
    epsilon_max: float
    spent: float
    features: tuple[str, ...] = ()  # empty: every column
    schema_hash: str = ""  # what [approval] schema-hash would pin
    rows: int | None = None
    sigma: float | None = None
    run_epsilon: float | None = None
    lifetime_after: float | None = None
    decline: Decline | None = None

    @property
    def left(self) -> float | None:
        """The lifetime budget left after the run."""
        if self.lifetime_after is None:
            return None
        return self.epsilon_max - self.lifetime_after

    def to_dict(self) -> dict[str, Any]:
        """As ``--format json`` prints it."""
        decline = self.decline
        return {
            "site": self.site,
            "rounds": self.rounds,
            "features": list(self.features),
            "schema_hash": self.schema_hash,
            "rows": self.rows,
            "sigma": self.sigma,
            "run_epsilon": self.run_epsilon,
            "lifetime_spent": self.spent,
            "lifetime_after": self.lifetime_after,
            "epsilon_max": self.epsilon_max,
            "left": self.left,
            "decline": None
            if decline is None
            else {"reason": decline.reason, "detail": decline.detail},
        }


def read_study(path: Path) -> tuple[TrainingConfig, str]:
    """A study's ``[training]`` settings and ``[coordinator]`` target.

    Raises:
        ConfigError: the file cannot be read or a key is wrong.
    """
    raw = read_toml(path)
    coordinator = raw.get("coordinator", {})
    training = raw.get("training", {})
    if not isinstance(coordinator, dict) or not isinstance(training, dict):
        raise ConfigError(f"{path}: [coordinator] and [training] must be tables")
    target = str(coordinator.get("target", "target"))
    return parse_fields(TrainingConfig, training, source=f"{path} [training]"), target


def _policy(cfg: SiteConfig) -> tuple[Path, SitePolicy]:
    if cfg.policy_file is None:
        raise ConfigError(
            "no privacy policy: add a [privacy] table to the site's TOML file or "
            "set policy = PATH in [site]"
        )
    return cfg.policy_file, load_policy(cfg.policy_file)


def _site(cfg: SiteConfig) -> SiteSettings:
    opts = cfg.options
    node: dict[str, Any] = {"site-name": opts.name, "state": str(cfg.state_dir)}
    if opts.vault:
        node |= {"vault": str(cfg.path(opts.vault))}
        node |= {"key-file": str(cfg.path(opts.key_file))}
    else:
        node["data"] = str(cfg.path(opts.data))
    return site_settings(node, {})


def _rows(site: SiteSettings, settings: TrainingConfig, target: str) -> int | Decline:
    split = load_site_data(site, target=target)
    selected = select_columns(split, settings.features, target)
    return (
        Decline("data", selected) if isinstance(selected, str) else len(selected.train)
    )


def plan_study(cfg: SiteConfig, study: Path) -> RunPlan:
    """What ``study`` would cost the site of ``cfg``, or why it would decline.

    Raises:
        ConfigError: the study, the site's settings or its policy are invalid.
        DataError: the site's data cannot be read.
    """
    settings, target = read_study(study)
    return plan_run(cfg, settings, target)


def plan_run(cfg: SiteConfig, settings: TrainingConfig, target: str) -> RunPlan:
    """What a run of ``settings`` predicting ``target`` would cost the site of
    ``cfg`` (a study's, or a held run's recorded settings), or why it would decline.

    Raises:
        ConfigError: the site's settings or its policy are invalid.
        DataError: the site's data cannot be read.
    """
    policy_file, policy = _policy(cfg)
    budget = SiteBudget.open(
        policy_file=policy_file,
        state_dir=cfg.state_dir,
        run_id=f"plan-{uuid.uuid4().hex}",  # a run with no history
        settings=settings,
        policy=policy,
    )
    spent = 0.0 if isinstance(budget, Decline) else budget.ledger.epsilon()
    base = RunPlan(
        cfg.options.name,
        settings.rounds,
        policy.epsilon_max,
        spent,
        features=settings.features,
        schema_hash=run_schema_hash(target, settings.features),
    )
    run_config = settings.to_run_config() | {RUN_TARGET: target}
    site = _site(cfg)
    decline = check_request(policy, settings) or approve(
        policy_file, settings, run_config, lambda: data_columns(site)
    )
    if decline is not None or not settings.dp:
        return replace(base, decline=decline)
    if isinstance(budget, Decline):
        return replace(base, decline=budget)
    rows = _rows(site, settings, target)
    if isinstance(rows, Decline):
        return replace(base, decline=rows)
    decline = check_rows(policy, rows=rows)
    if decline is not None:
        return replace(base, rows=rows, decline=decline)
    first = budget.plan_round(dp_schedule(rows, settings.batch_size))
    if isinstance(first, Decline):
        return replace(base, rows=rows, decline=first)
    return _whole_run(base, budget, first, rows)


def _whole_run(base: RunPlan, budget: SiteBudget, first: Step, rows: int) -> RunPlan:
    policy, settings = budget.policy, budget.settings
    steps = [first] * settings.rounds
    run_eps = epsilon_spent(steps, delta=policy.delta, accountant=policy.accountant)
    whole = Step(
        noise_multiplier=first.noise_multiplier,
        sample_rate=first.sample_rate,
        steps=first.steps * len(steps),
    )
    after = budget.ledger.projected_epsilon(whole)
    over = [
        (what, figure, limit)
        for what, figure, limit in (
            ("the lifetime epsilon", after, policy.epsilon_max),
            ("this run's epsilon", run_eps, settings.epsilon),
        )
        if figure > limit * (1 + 1e-9)
    ]
    decline = None
    if over:
        what, figure, limit = over[0]
        decline = Decline(
            "budget",
            f"its {settings.rounds} rounds would bring {what} to {figure:.4f} > "
            f"{limit:g}: the site would decline its last rounds",
        )
    return replace(
        base,
        rows=rows,
        sigma=first.noise_multiplier,
        run_epsilon=run_eps,
        lifetime_after=after,
        decline=decline,
    )
