"""The epsilon lower bound of a one-run privacy audit.

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run",
NeurIPS 2023 (arXiv:2305.08846). The auditor draws m canaries, includes each in the
training data independently with probability 1/2, trains once, and then guesses for
r of them (abstaining on the rest) whether each was included. If the training run
is (epsilon, delta)-DP with respect to each canary, the number W of correct guesses
is stochastically dominated as their main theorem says (delta = 0: W is dominated by
Binomial(r, e^eps / (1 + e^eps))), in its (epsilon, delta) form:

    P[W >= v] <= P[Binomial(r, q) >= v]
                 + 2 m delta * max_{1 <= i <= v} P[v - i <= Binomial(r, q) < v] / i,

with q = e^eps / (1 + e^eps), the accuracy of eps-DP randomized response. The
right-hand side is :func:`p_value` (the paper's own p-value code,
``p_value_DP_audit``, computed here with exact binomial tails from scipy). The
lower bound (:func:`epsilon_lower_bound`) is the largest eps the observed v rejects
at the chosen confidence: with probability at least ``confidence`` over the canaries'
coin flips, the run is not (eps', delta)-DP for any eps' it reports, so a run whose
accountant says eps must give a lower bound <= eps (up to the 1 - confidence chance
of a false alarm).

Reading the numbers: perfect guessing of r canaries at delta = 0 can at most show
eps = log(t / (1 - t)) with t = (1 - confidence)^(1 / r) (r = 100 at 95 %: 3.49),
and guessing at chance shows 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special, stats  # type: ignore[import-untyped]

from fedvault.common.errors import ConfigError

_MAX_EPSILON = 100.0  # e^100 / (1 + e^100) == 1.0 in float64: no bound beyond it


def p_value(
    *, canaries: int, guesses: int, correct: int, epsilon: float, delta: float
) -> float:
    """The probability of at least ``correct`` right guesses out of ``guesses`` under
    (``epsilon``, ``delta``)-DP with ``canaries`` canaries (the bound above).

    Raises:
        ConfigError: counts out of order (need 0 <= correct <= guesses <= canaries),
            a negative epsilon or a delta outside [0, 1].
    """
    _check(canaries=canaries, guesses=guesses, correct=correct, delta=delta)
    if epsilon < 0:
        raise ConfigError(f"epsilon: must be >= 0, got {epsilon}")
    q = float(special.expit(epsilon))
    beta = float(stats.binom.sf(correct - 1, guesses, q))  # P[Bin(r, q) >= v]
    if correct == 0 or delta == 0:
        return min(1.0, beta)
    # P[v - i <= Bin(r, q) < v] for i = 1..v: cumulative pmf from v-1 downwards
    below = np.cumsum(stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, q))
    alpha = float(np.max(below / np.arange(1, correct + 1)))
    return min(1.0, beta + alpha * delta * 2 * canaries)


def epsilon_lower_bound(
    *,
    canaries: int,
    guesses: int,
    correct: int,
    delta: float,
    confidence: float = 0.95,
) -> float:
    """The largest epsilon that ``correct`` right guesses out of ``guesses`` reject at
    ``confidence`` for (epsilon, ``delta``)-DP: the audit's empirical lower bound.
    0 when even epsilon = 0 is not rejected.

    Raises:
        ConfigError: bad counts or delta (see :func:`p_value`), or a confidence
            outside (0, 1).
    """
    _check(canaries=canaries, guesses=guesses, correct=correct, delta=delta)
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence: must be in (0, 1), got {confidence}")
    alpha = 1 - confidence

    def excess(eps: float) -> float:
        value = p_value(
            canaries=canaries,
            guesses=guesses,
            correct=correct,
            epsilon=eps,
            delta=delta,
        )
        return value - alpha

    if excess(0.0) >= 0:
        return 0.0
    if excess(_MAX_EPSILON) < 0:
        return _MAX_EPSILON
    # p_value increases with epsilon: one root, found to 1e-9
    root = optimize.brentq(excess, 0.0, _MAX_EPSILON, xtol=1e-9)
    return float(root)


def perfect_guessing_bound(guesses: int, *, confidence: float = 0.95) -> float:
    """The most ``guesses`` all-correct guesses can show at delta = 0:
    log(t / (1 - t)) with t = (1 - confidence)^(1 / guesses)."""
    t = (1 - confidence) ** (1 / guesses)
    return math.log(t / (1 - t))


def _check(*, canaries: int, guesses: int, correct: int, delta: float) -> None:
    if not 0 <= correct <= guesses <= canaries:
        raise ConfigError(
            "audit counts: need 0 <= correct <= guesses <= canaries, got "
            f"{correct}, {guesses}, {canaries}"
        )
    if not 0 <= delta <= 1:
        raise ConfigError(f"delta: must be in [0, 1], got {delta}")
