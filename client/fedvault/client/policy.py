"""A site's privacy policy: the limits its own operator sets, which no run can raise.

The policy lives in a site-owned TOML file (e.g. ``site.toml``), in a ``[privacy]``
table, and is parsed once, at the edge, into a frozen :class:`SitePolicy`::

    [privacy]
    dataset-id = "icu-2024"             # the dataset this budget belongs to
    epsilon-max = 8.0                   # lifetime budget over all runs, at `delta`
    delta = 1e-5                        # must be below 1/n of the training rows
    min-noise-multiplier = 0.8          # no run may train with less noise
    max-noise-multiplier = 10.0         # nor spend budget on rounds this noisy
    max-grad-norm = 1.0                 # largest per-sample clipping norm accepted
    accountant = "rdp"                  # rdp | prv
    require-secure-aggregation = false
    allow-non-private = false           # a run may switch DP off (never, by default)
    # max-rounds = 50                   # most rounds one run may ask for (no limit)

Nothing in a coordinator's run config is read into the policy. Every message of a
run is first checked against it, before any data is read, by :func:`check_request`,
which answers with a typed :class:`Decline` (or ``None`` when the request is
acceptable); once the site's rows are loaded, :func:`check_rows` checks delta
against their number. The budget itself is enforced round by round by
:class:`fedvault.client.ledger.PrivacyLedger`. A run that asks for another delta or
accountant is not declined: the site always accounts with its own, and says which in
its reply.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from fedvault.common._rdp import search_noise
from fedvault.common.config import TrainingConfig, key_of, parse_fields, read_toml
from fedvault.common.errors import BudgetExceededError, ConfigError, PrivacyError
from fedvault.common.privacy import (
    ACCOUNTANTS,
    Accountant,
    Step,
    epsilon_spent,
    plan_noise,
)
from fedvault.common.protocol import Decline, DeclineReason

__all__ = [
    "POLICY_TABLE",
    "Decline",
    "DeclineReason",
    "LedgerView",
    "SitePolicy",
    "check_dataset_id",
    "check_matches",
    "check_request",
    "check_rows",
    "load_policy",
    "plan_run_noise",
]

POLICY_TABLE = "privacy"
# A delta above this gets a warning when the site starts: DP practice wants delta
# far below 1/n, and 1e-3 is already 1/n for a thousand rows.
LARGE_DELTA = 1e-3


# Dataset ids name files in the site's state folder: no separators, no dot-files.
_DATASET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_dataset_id(dataset_id: str, *, key: str = "dataset-id") -> str:
    """Return ``dataset_id`` if it is safe as a file name, else raise ConfigError."""
    if not isinstance(dataset_id, str) or not _DATASET_ID.fullmatch(dataset_id):
        raise ConfigError(
            f"{key}: {dataset_id!r} is not a valid dataset id (letters, digits, '.', "
            "'_', '-'; starting with a letter or digit; at most 128 characters)"
        )
    return dataset_id


# A round planned with more noise than this wastes budget: on the embedded data
# (5 sites, 10 rounds, MLP) test accuracy was 0.89-0.92 at sigma 10, 0.73-0.84 at
# 20 and 0.56-0.83 at 38 (majority class 0.63); docs/privacy.md, "Choosing
# max-noise-multiplier".
DEFAULT_MAX_NOISE_MULTIPLIER = 10.0


@dataclass(frozen=True, kw_only=True)
class SitePolicy:
    """The privacy limits a site's operator signed off for one dataset."""

    dataset_id: str
    epsilon_max: float
    delta: float
    min_noise_multiplier: float = 0.5
    max_noise_multiplier: float = DEFAULT_MAX_NOISE_MULTIPLIER
    max_grad_norm: float = 1.0
    accountant: Accountant = "rdp"
    require_secure_aggregation: bool = False
    allow_non_private: bool = False
    max_rounds: int | None = None

    def __post_init__(self) -> None:
        check_dataset_id(self.dataset_id)
        for name in (
            "epsilon_max",
            "min_noise_multiplier",
            "max_noise_multiplier",
            "max_grad_norm",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"{key_of(name)}: must be a finite number > 0, got {value}"
                )
        if self.max_noise_multiplier < self.min_noise_multiplier:
            raise ConfigError(
                f"max-noise-multiplier: {self.max_noise_multiplier:g} is below "
                f"min-noise-multiplier {self.min_noise_multiplier:g}"
            )
        if not (math.isfinite(self.delta) and 0 < self.delta < 1):
            raise ConfigError(f"delta: must be in (0, 1), got {self.delta}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"accountant: unknown {self.accountant!r}; use one of {ACCOUNTANTS}"
            )
        if self.max_rounds is not None and self.max_rounds < 1:
            raise ConfigError(f"max-rounds: must be >= 1, got {self.max_rounds}")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, source: str) -> SitePolicy:
        """Parse the kebab-case keys of a ``[privacy]`` table."""
        required = [key_of(f.name) for f in fields(cls) if f.default is MISSING]
        missing = [key for key in required if key not in mapping]
        if missing:
            raise ConfigError(f"{source}: missing key {missing[0]!r}")
        return parse_fields(cls, mapping, source=source)


def load_policy(path: Path, *, warn: bool = False) -> SitePolicy:
    """Read and validate the ``[privacy]`` table of the site policy file ``path``;
    with ``warn``, log a warning for a delta above :data:`LARGE_DELTA`.

    Other top-level tables (the site's other settings) are ignored; unknown keys
    inside ``[privacy]`` are errors (:class:`ConfigError`).
    """
    if not path.is_file():
        raise ConfigError(f"site policy file not found: {path}")
    table = read_toml(path).get(POLICY_TABLE)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: missing [{POLICY_TABLE}] table")
    policy = SitePolicy.from_mapping(table, source=f"{path} [{POLICY_TABLE}]")
    if warn and policy.delta > LARGE_DELTA:
        logging.getLogger(__name__).warning(
            "%s [%s]: delta = %g is large: it is the chance that the privacy "
            "guarantee fails outright; use far below 1/(training rows), e.g. 1e-5 "
            "(rounds are declined once delta >= 1/rows)",
            path,
            POLICY_TABLE,
            policy.delta,
        )
    return policy


def check_request(policy: SitePolicy, settings: TrainingConfig) -> Decline | None:
    """Check a run's whole request against the site's policy, before any data is
    read: ``None`` when the site takes part, else a ``Decline("policy", ...)``.

    Declined: DP off unless ``allow-non-private``; no secure aggregation where the
    policy requires it; more rounds than ``max-rounds``; with DP, a clipping norm
    above ``max-grad-norm`` or a fixed noise multiplier outside
    [``min-noise-multiplier``, ``max-noise-multiplier``]. Not checked here: the
    run's epsilon (a run can only ask for *less* than the site's remaining budget,
    which the ledger enforces before every round) and its delta and accountant
    (the site always uses its own).
    """
    if not settings.dp and not policy.allow_non_private:
        return Decline(
            "policy",
            "the run asks to train without differential privacy (dp = false); the "
            "site's policy does not allow it (allow-non-private)",
        )
    if policy.require_secure_aggregation and not settings.secagg:
        return Decline(
            "policy", "the site requires secure aggregation; the run has it off"
        )
    if policy.max_rounds is not None and settings.rounds > policy.max_rounds:
        return Decline(
            "policy",
            f"the run asks for {settings.rounds} rounds; the site allows at most "
            f"{policy.max_rounds} per run",
        )
    return _check_dp_request(policy, settings) if settings.dp else None


def _check_dp_request(policy: SitePolicy, settings: TrainingConfig) -> Decline | None:
    clip = settings.max_grad_norm
    if not (math.isfinite(clip) and clip > 0):
        return Decline("policy", f"clipping norm {clip} must be finite and > 0")
    if clip > policy.max_grad_norm:
        return Decline(
            "policy",
            f"clipping norm {clip:g} exceeds the site's maximum "
            f"{policy.max_grad_norm:g}",
        )
    sigma = settings.noise_multiplier or None  # 0: the site plans its own
    if sigma is not None and not (
        math.isfinite(sigma) and sigma >= policy.min_noise_multiplier
    ):
        return Decline(
            "policy",
            f"noise multiplier {sigma:g} is below the site's minimum "
            f"{policy.min_noise_multiplier:g}",
        )
    if sigma is not None and sigma > policy.max_noise_multiplier:
        return Decline(
            "policy",
            f"noise multiplier {sigma:g} is above the site's max-noise-multiplier "
            f"{policy.max_noise_multiplier:g}: rounds that noisy waste the budget",
        )
    return None


def check_rows(policy: SitePolicy, *, rows: int) -> Decline | None:
    """``Decline("policy", ...)`` unless the policy's delta is below 1/n for the
    site's ``rows`` training rows (a delta of 1/n or more allows a mechanism that
    publishes one record outright), else ``None``."""
    if rows > 0 and policy.delta * rows >= 1:
        return Decline(
            "policy",
            f"delta {policy.delta:g} is not below 1/n = {1 / rows:.3g} for the "
            f"site's n = {rows} training rows",
        )
    return None


# --- planning the noise of a run within the policy ------------------------------


class LedgerView(Protocol):
    """What planning needs of a :class:`fedvault.client.ledger.PrivacyLedger`."""

    @property
    def dataset_id(self) -> str: ...
    @property
    def delta(self) -> float: ...
    @property
    def accountant(self) -> Accountant: ...
    def epsilon(self) -> float: ...
    def projected_epsilon(
        self, planned: Step, *, coarse: bool = False, extra: Sequence[Step] = ()
    ) -> float: ...


def check_matches(policy: SitePolicy, ledger: LedgerView) -> None:
    """ConfigError unless ``ledger`` is the policy's dataset at its delta/accountant."""
    mine = (ledger.dataset_id, ledger.delta, ledger.accountant)
    theirs = (policy.dataset_id, policy.delta, policy.accountant)
    if mine != theirs:
        raise ConfigError(
            f"policy (dataset-id, delta, accountant) {theirs} does not match the "
            f"ledger opened with {mine}"
        )


def plan_run_noise(
    ledger: LedgerView,
    policy: SitePolicy,
    *,
    sample_rate: float,
    steps_this_run: int,
    target_epsilon_this_run: float | None = None,
    extra: Sequence[Step] = (),
    prior: Sequence[Step] = (),
) -> float:
    """Noise multiplier for a run of ``steps_this_run`` steps at ``sample_rate``.

    The smallest sigma (within 0.1 %, rounded up) such that
    - lifetime epsilon, the ledger's history composed with all of this run's steps,
      stays <= ``policy.epsilon_max``;
    - this run alone spends <= ``target_epsilon_this_run`` if given (a run may ask
      for less than the site allows, never for more);
    - sigma >= ``policy.min_noise_multiplier``.

    ``extra``: this run's other releases still to come (validation counts),
    composed with the run's steps in both bounds; ``prior``: those already in
    the ledger that count towards this run (its summary), in the run's bound.

    Raises :class:`BudgetExceededError` when the remaining budget cannot cover the
    run at any noise multiplier up to 1024.
    """
    check_matches(policy, ledger)
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample rate must be in (0, 1], got {sample_rate}")
    if steps_this_run < 1:
        raise ConfigError(f"steps must be >= 1, got {steps_this_run}")
    floor = policy.min_noise_multiplier
    # A run target at or above the budget is implied by the lifetime bound; one the
    # site's smallest noise already meets needs no search (a search towards a huge
    # target, e.g. epsilon 1000 with PRV, could run for minutes).
    if (
        target_epsilon_this_run is not None
        and target_epsilon_this_run < policy.epsilon_max
        and _run_epsilon(policy, floor, sample_rate, steps_this_run, [*prior, *extra])
        > target_epsilon_this_run
    ):
        others = [*prior, *extra]
        run_only = _run_only(
            policy, target_epsilon_this_run, sample_rate, steps_this_run, others
        )
        floor = max(floor, run_only)
    spent = ledger.epsilon()
    if spent >= policy.epsilon_max:
        raise BudgetExceededError(
            f"budget spent: lifetime epsilon {spent:.4f} >= {policy.epsilon_max:g}"
        )

    def lifetime(sigma: float, coarse: bool = False) -> float:
        step = Step(
            noise_multiplier=sigma, sample_rate=sample_rate, steps=steps_this_run
        )
        return ledger.projected_epsilon(step, coarse=coarse, extra=extra)

    try:
        # Stop within 1% of what is left (at most 0.01): no budget is wasted.
        tolerance = min(0.01, 0.01 * (policy.epsilon_max - spent))
        sigma = search_noise(
            lifetime,
            policy.epsilon_max,
            what=f"{steps_this_run} more steps",
            floor=floor,
            tolerance=tolerance,
            coarse=functools.partial(lifetime, coarse=True),
        )
    except PrivacyError:
        raise BudgetExceededError(
            f"the remaining budget ({spent:.4f} of {policy.epsilon_max:g} spent) "
            f"cannot cover {steps_this_run} more steps at any noise multiplier"
        ) from None
    return max(sigma, floor)


def _run_only(
    policy: SitePolicy,
    target: float,
    sample_rate: float,
    steps: int,
    extra: Sequence[Step],
) -> float:
    """Smallest sigma for the run's steps composed with ``extra`` within ``target``."""
    if not extra:
        return plan_noise(
            target_epsilon=target,
            delta=policy.delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=policy.accountant,
        )

    def eps(sigma: float, coarse: bool = False) -> float:
        step = Step(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
        return epsilon_spent(
            [*extra, step],
            delta=policy.delta,
            accountant=policy.accountant,
            coarse=coarse,
        )

    try:
        return search_noise(
            eps,
            target,
            what=f"{steps} steps with this run's other releases",
            coarse=functools.partial(eps, coarse=True),
        )
    except PrivacyError:
        raise BudgetExceededError(
            f"the run's epsilon {target:g} cannot cover {steps} steps with its "
            "other releases at any noise multiplier"
        ) from None


def _run_epsilon(
    policy: SitePolicy,
    sigma: float,
    sample_rate: float,
    steps: int,
    extra: Sequence[Step],
) -> float:
    """Epsilon of ``steps`` steps at ``sigma`` with ``extra``, the site's accountant."""
    step = Step(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
    return epsilon_spent(
        [*extra, step], delta=policy.delta, accountant=policy.accountant
    )
