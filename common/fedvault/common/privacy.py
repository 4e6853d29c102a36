"""Privacy planning and accounting for sample-level DP-SGD (the safe surface).

Every epsilon fedvault reports comes from :func:`epsilon_spent`, i.e. from an Opacus
accountant fed the steps a site actually executed; nothing here is typed in.

The guarantee is *sample-level* (one record of one site, add/remove adjacency),
(epsilon, delta)-DP for everything the site releases (all its model updates), under
Poisson sampling with rate ``sample_rate`` and per-sample clipping. See
docs/privacy.md. The mechanisms (the noise search, the RDP curves and their file
cache) live in the private :mod:`fedvault.common._rdp`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fedvault.common import _rdp
from fedvault.common._rdp import CURVE_PATTERN, keep_curves_in, verify_curves
from fedvault.common.errors import ConfigError, PrivacyError

__all__ = [
    "ACCOUNTANTS",
    "CURVE_PATTERN",
    "IMAGE_SUMMARY_SHARE",
    "METRICS_SHARE",
    "NOT_COVERED",
    "RELEASES",
    "SUMMARY_SHARE",
    "Accountant",
    "Schedule",
    "Step",
    "epsilon_spent",
    "keep_curves_in",
    "plan_noise",
    "verify_curves",
]

Accountant = Literal["rdp", "prv"]

# How a DP site splits a run's epsilon target: its summary's noise is planned for
# SUMMARY_SHARE of it on its own, the validation counts' for METRICS_SHARE over all
# rounds on their own, and DP-SGD for what their composition leaves
# (fedvault.client.releases; measured in docs/privacy.md).
SUMMARY_SHARE = 0.5
# An image site's summary is its row count and label counts only (no feature
# statistics to condition training): its noise is planned for a smaller share, and
# DP-SGD keeps more of the run's epsilon (docs/models.md, "Measured").
IMAGE_SUMMARY_SHARE = 0.2
METRICS_SHARE = 0.05

# Every kind of release that leaves a DP site, its mechanism and its share of the
# run's epsilon (the sites' planning: fedvault.client.releases); all are composed by
# the site's accountant into the one epsilon it reports.
RELEASES: tuple[dict[str, str], ...] = (
    {
        "release": "model updates (every trained round)",
        "mechanism": "DP-SGD: Poisson sampling, per-sample clipping, Gaussian noise",
        "share": "what the composition with the releases below leaves of the "
        "run's epsilon",
    },
    {
        "release": "preprocessing summary (row, label and category counts; sums of "
        "numeric values clipped to their bounds; no sums of squares), once per "
        "dataset version",
        "mechanism": "one Gaussian release on per-row contributions clipped to L2 "
        "norm 2; undeclared categories only above a noisy-count threshold",
        "share": f"noise planned for {SUMMARY_SHARE:.0%} of the run's epsilon on "
        f"its own ({IMAGE_SUMMARY_SHARE:.0%} for images: counts only; less once "
        "composed); kept and sent again, never charged twice",
    },
    {
        "release": "validation counts (correct predictions, examples) per "
        "evaluation round",
        "mechanism": "Gaussian noise, L2 sensitivity sqrt(2)",
        "share": f"noise planned for {METRICS_SHARE:.0%} of the run's epsilon over "
        "all rounds on its own",
    },
    {
        "release": "example count in training replies",
        "mechanism": "the summary's noisy row count again (post-processing)",
        "share": "none",
    },
)
NOT_COVERED = (
    "the participation of a site and which rounds it trained or declined; the "
    "sampling rate q, the step count and the noise multiplier sigma in every DP "
    "reply (q = 1/ceil(n/B) gives the site's row count n to within the batch size "
    "B); the schema's declared bounds and categories; the choice of dropped "
    "identifier-like columns; the undeclared-category threshold's probability "
    "1e-9 per key, outside delta; the ledger head a site publishes with its "
    "replies (its ledger's record count, last hash and lifetime epsilon: how often "
    "the dataset was used); which of a run's feature columns a site lacks (a data "
    "decline names it); a policy decline of a model that no Opacus grad-sample "
    "mode trains right, naming which modes fail or differ (checked on a batch of "
    "the site's rows: a property of the model, up to float rounding). No "
    "training or validation loss is released"
)
ACCOUNTANTS: tuple[Accountant, ...] = ("rdp", "prv")


@dataclass(frozen=True, kw_only=True)
class Step:
    """``steps`` DP-SGD steps with ``noise_multiplier`` at Poisson ``sample_rate``.

    One value for the whole round: the budget plans it, the trainer runs exactly
    it, the ledger records it and the accountant composes it (Opacus' names).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """Poisson sampling rate and DP-SGD steps per local epoch of a site's rows."""

    sample_rate: float
    steps_per_epoch: int

    def plan(self, *, noise_multiplier: float, epochs: int) -> Step:
        """The :class:`Step` of ``epochs`` local epochs at ``noise_multiplier``."""
        return Step(
            noise_multiplier=noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps_per_epoch * epochs,
        )


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
    """Smallest noise multiplier (within 0.01 in epsilon) such that ``steps``
    DP-SGD steps at ``sample_rate`` spend at most ``target_epsilon``.

    ``prv`` uses Opacus' own ``get_noise_multiplier``. ``rdp`` searches sigma with the
    same accountant maths (Opacus' ``compute_rdp``/``get_privacy_spent``) but far fewer
    evaluations (regula falsi on log-log, bracketed), because each evaluation costs a
    full RDP curve. Either way the result satisfies epsilon(sigma) <= target.
    Cached: a site plans once per distinct (budget, rate, steps), not every round.

    Raises :class:`ConfigError` for an argument out of range and
    :class:`PrivacyError` when no noise level reaches ``target_epsilon``.
    """
    _check(accountant, delta)
    if target_epsilon <= 0:
        raise ConfigError(f"epsilon: must be > 0, got {target_epsilon}")
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample rate must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if accountant == "prv":
        return _plan_with_opacus(target_epsilon, delta, sample_rate, steps)

    def eps(sigma: float, coarse: bool = False) -> float:
        step = Step(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
        return epsilon_spent([step], delta=delta, coarse=coarse)

    return _rdp.search_noise(
        eps,
        target_epsilon,
        what=f"{steps} steps at sample rate {sample_rate:.4g}",
        coarse=functools.partial(eps, coarse=True),
    )


def _plan_with_opacus(target: float, delta: float, q: float, steps: int) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target,
                target_delta=delta,
                sample_rate=q,
                steps=steps,
                accountant="prv",
                epsilon_tolerance=0.01,
            )
        )
    except ValueError as exc:
        raise PrivacyError(
            f"epsilon={target} is too small for {steps} steps at sample rate {q:.4g} "
            "(no noise level reaches it)"
        ) from exc


def epsilon_spent(
    history: Iterable[Step],
    *,
    delta: float,
    accountant: Accountant = "rdp",
    coarse: bool = False,
) -> float:
    """Epsilon at ``delta`` after all steps in ``history`` (composition by the
    accountant). An empty history spends 0.

    Steps with equal (noise multiplier, sample rate) are summed before the
    accountant sees them: the composition is the same (it is commutative and
    additive in steps) and a long history costs one accountant term per distinct
    pair.

    ``coarse=True`` (RDP only) converts at fewer orders: a valid but slightly larger
    epsilon, cheap to compute; used only to narrow searches, never reported.

    Raises :class:`ConfigError` for an unknown accountant or a delta outside (0, 1).
    """
    _check(accountant, delta)
    grouped: dict[tuple[float, float], int] = {}
    for s in history:
        if s.steps > 0:
            pair = (s.noise_multiplier, s.sample_rate)
            grouped[pair] = grouped.get(pair, 0) + s.steps
    if not grouped:
        return 0.0
    entries = tuple((sigma, q, steps) for (sigma, q), steps in sorted(grouped.items()))
    if accountant == "rdp":
        orders = _rdp.COARSE_ORDERS if coarse else _rdp.ORDERS
        return _rdp.rdp_epsilon(entries, delta, orders)
    return _cached_epsilon(entries, delta, accountant)


@functools.lru_cache(maxsize=1024)
def _cached_epsilon(entries: _rdp.Entries, delta: float, accountant: str) -> float:
    from opacus.accountants import create_accountant

    acct = create_accountant(mechanism=accountant)
    acct.history = list(entries)
    return float(acct.get_epsilon(delta=delta))
