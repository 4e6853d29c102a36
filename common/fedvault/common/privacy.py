"""Privacy planning and accounting for sample-level DP-SGD (the safe surface).

Every epsilon fedvault reports comes from :func:`epsilon_spent`, i.e. from an Opacus
accountant fed the steps a site actually executed; nothing here is typed in.

The guarantee is *sample-level* (one record of one site, add/remove adjacency),
(epsilon, delta)-DP for everything the site releases (all its model updates), under
Poisson sampling with rate ``q`` and per-sample clipping. See docs/privacy.md.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from fedvault.common.errors import ConfigError, PrivacyError

Accountant = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[Accountant, ...] = ("rdp", "prv")


@dataclass(frozen=True)
class Step:
    """``steps`` DP-SGD steps with noise multiplier ``sigma`` at sample rate ``q``."""

    sigma: float
    q: float
    steps: int


def _check(accountant: str, delta: float) -> None:
    if accountant not in ACCOUNTANTS:
        raise ConfigError(
            f"accountant: unknown {accountant!r}; use one of {ACCOUNTANTS}"
        )
    if not 0 < delta < 1:
        raise ConfigError(f"delta: must be in (0, 1), got {delta}")


@functools.lru_cache(maxsize=256)
def plan_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant = "rdp",
) -> float:
    """Smallest noise multiplier (within Opacus' search tolerance) such that
    ``steps`` DP-SGD steps at ``sample_rate`` spend at most ``target_epsilon``.

    Cached: a site plans once per distinct (budget, rate, steps), not every round.
    """
    from opacus.accountants.utils import get_noise_multiplier

    _check(accountant, delta)
    if target_epsilon <= 0:
        raise ConfigError(f"epsilon: must be > 0, got {target_epsilon}")
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample rate must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    try:
        sigma = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=0.01,
        )
    except ValueError as exc:
        raise PrivacyError(
            f"epsilon={target_epsilon} is too small for {steps} steps at sample rate "
            f"{sample_rate:.4g} (no noise level reaches it)"
        ) from exc
    return float(sigma)


def epsilon_spent(
    history: Iterable[Step], *, delta: float, accountant: Accountant = "rdp"
) -> float:
    """Epsilon at ``delta`` after all steps in ``history`` (composition by the
    accountant). An empty history spends 0.

    Steps with equal (sigma, q) are summed before the accountant sees them: the
    composition is the same (it is commutative and additive in steps) and a long
    history costs one accountant term per distinct (sigma, q).
    """
    _check(accountant, delta)
    grouped: dict[tuple[float, float], int] = {}
    for s in history:
        if s.steps > 0:
            grouped[(s.sigma, s.q)] = grouped.get((s.sigma, s.q), 0) + s.steps
    if not grouped:
        return 0.0
    entries = tuple((sigma, q, steps) for (sigma, q), steps in sorted(grouped.items()))
    return _cached_epsilon(entries, delta, accountant)


@functools.lru_cache(maxsize=1024)
def _cached_epsilon(
    entries: tuple[tuple[float, float, int], ...], delta: float, accountant: str
) -> float:
    from opacus.accountants import create_accountant

    acct = create_accountant(mechanism=accountant)
    acct.history = list(entries)
    return float(acct.get_epsilon(delta=delta))


def history_to_json(history: Sequence[Step]) -> str:
    return json.dumps([[s.sigma, s.q, s.steps] for s in history])


def history_from_json(text: str) -> list[Step]:
    return [Step(float(a), float(b), int(c)) for a, b, c in json.loads(text)]
