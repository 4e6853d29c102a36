"""RDP accounting internals: noise search and per-step curves — PRIVACY-CRITICAL.

.. warning:: Hazmat. Use :mod:`fedvault.common.privacy` (``plan_noise``,
   ``epsilon_spent``, ``keep_curves_in``) or
   :func:`fedvault.client.policy.plan_run_noise`, which feed these functions only
   curves of Opacus' own accountant. Any change here must keep
   ``tests/privacy/test_planning.py`` and ``tests/privacy/test_ledger_composition.py``
   passing: they check every figure against Opacus' ``RDPAccountant`` and
   ``get_noise_multiplier``.

Two mechanisms live here:

- :func:`search_noise`, the root search for the smallest noise multiplier whose
  epsilon (any decreasing function computed by the accountant) stays at a target:
  Illinois-style regula falsi on (log sigma, log epsilon), bracketed so that every
  answer is safe;
- :func:`rdp_epsilon`, Opacus' ``RDPAccountant.get_epsilon`` term for term, with the
  RDP curve of one step per distinct (sigma, q) computed once and cached in memory
  and, after :func:`keep_curves_in`, in files (each a JSON document ``{"key": ...,
  "curve": [...], "hmac": ...}`` named ``rdp-<hash of the key>.json``, authenticated
  with HMAC-SHA256 under a key the site holds; :func:`verify_curves` checks them).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedvault.common.errors import IntegrityError, PrivacyError
from fedvault.common.files import atomic_write

logger = logging.getLogger(__name__)

# Opacus' RDPAccountant.DEFAULT_ALPHAS, the orders its get_epsilon minimises over.
ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
# A subset of ORDERS (1.5 and the integer orders, cheap to price): the minimum over
# fewer orders is never below the minimum over all, so its epsilon is an upper bound.
COARSE_ORDERS = tuple(a for a in ORDERS if a == 1.5 or float(a).is_integer())
_SIGMA_CEILING = 4096.0

Entries = tuple[tuple[float, float, int], ...]
"""(noise multiplier, sample rate, steps), one per distinct (sigma, q), sorted."""


# --- the root search ------------------------------------------------------------


def search_noise(
    eps: Callable[[float], float],
    target: float,
    *,
    what: str,
    floor: float = 0.0,
    tolerance: float = 0.01,
    coarse: Callable[[float], float] | None = None,
) -> float:
    """Smallest sigma found with ``target - tolerance <= eps(sigma) <= target``,
    for any ``eps`` computed by the accountant (e.g. a ledger's history plus a run).

    ``eps`` decreases in sigma. Every bracket keeps eps(hi) <= target, so whatever
    is returned is safe. Steps are Illinois-style regula falsi on (log sigma,
    log eps): a handful of evaluations where bisection needs about twenty. Nothing
    below ``floor`` is tried; ``floor`` is returned when it already fits.

    ``coarse``, if given, is a cheaper *upper bound* of ``eps`` (the same RDP curve
    at fewer orders): the search runs on it first, and its answer (safe for ``eps``
    too) is then refined downwards with a few evaluations of ``eps`` itself.

    Raises :class:`PrivacyError` when no sigma up to 4096 reaches ``target``
    (``what`` names the steps in its message).
    """
    first = coarse or eps
    if floor > 0 and first(floor) <= target:
        return floor  # nothing below the floor is allowed: no search
    hi = max(1.0, floor)
    e_hi = first(hi)
    lo, e_lo = floor, math.inf
    while e_hi > target:
        lo, e_lo, hi = hi, e_hi, hi * 4
        if hi > _SIGMA_CEILING:
            raise PrivacyError(
                f"epsilon={target} is too small for {what} (no noise level reaches it)"
            )
        e_hi = first(hi)
    hi = _regula_falsi(first, target, (lo, e_lo), (hi, e_hi), tolerance)
    if coarse is None:
        return hi
    return _refine(eps, target, hi, floor=floor, tolerance=tolerance)


def _refine(
    eps: Callable[[float], float],
    target: float,
    hi: float,
    *,
    floor: float,
    tolerance: float,
) -> float:
    """Lower a safe sigma ``hi`` with ``eps`` itself until within ``tolerance``."""
    e_hi = eps(hi)
    lo, factor = hi, 0.95
    for _ in range(12):  # walk down, faster and faster, until eps passes the target
        lo, factor = max(floor, lo * factor), factor * factor
        e_lo = eps(lo)
        if e_lo > target:
            return _regula_falsi(eps, target, (lo, e_lo), (hi, e_hi), tolerance)
        hi, e_hi = lo, e_lo
        if lo == floor or target - e_hi <= tolerance:
            return hi
    return hi


def _regula_falsi(
    eps: Callable[[float], float],
    target: float,
    lo_point: tuple[float, float],
    hi_point: tuple[float, float],
    tolerance: float,
    max_calls: int = 30,
) -> float:
    (lo, e_lo), (hi, e_hi) = lo_point, hi_point
    kept_lo = kept_hi = 0
    for _ in range(max_calls):
        if target - e_hi <= tolerance:
            break
        mid = _interpolate(lo, e_lo, hi, e_hi, target, kept_lo, kept_hi)
        e_mid = eps(mid)
        if e_mid <= target:
            hi, e_hi, kept_lo, kept_hi = mid, e_mid, kept_lo + 1, 0
        else:
            lo, e_lo, kept_lo, kept_hi = mid, e_mid, 0, kept_hi + 1
    return hi


def _interpolate(
    lo: float,
    e_lo: float,
    hi: float,
    e_hi: float,
    target: float,
    kept_lo: int,
    kept_hi: int,
) -> float:
    """Next sigma to try: where log eps meets log target on the chord, with the
    endpoint kept more than once down-weighted (Illinois); bisection as fallback."""
    if lo <= 0 or not math.isfinite(e_lo) or e_hi <= 0:
        return (lo + hi) / 2
    a, b = math.log(lo), math.log(hi)
    fa = math.log(e_lo / target) / 2 ** max(kept_lo - 1, 0)
    fb = math.log(e_hi / target) / 2 ** max(kept_hi - 1, 0)
    if fa == fb:
        return (lo + hi) / 2
    mid = math.exp(b - fb * (b - a) / (fb - fa))
    return mid if lo < mid < hi else (lo + hi) / 2


# --- RDP curves and their cache -------------------------------------------------


def rdp_epsilon(entries: Entries, delta: float, orders: tuple[float, ...]) -> float:
    """Opacus' RDPAccountant.get_epsilon, term for term: the RDP curve of each
    distinct (sigma, q) for one step is computed once (cached) and scaled by its
    steps, exactly as ``compute_rdp(steps=n)`` does, then converted at ``delta``."""
    from opacus.accountants.analysis import rdp as analysis

    total = sum(steps * unit_rdp(sigma, q, orders) for sigma, q, steps in entries)
    with warnings.catch_warnings():
        # "Optimal order is the largest/smallest alpha": the bound is still valid,
        # only possibly loose; Opacus' own accountant returns the same value.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = analysis.get_privacy_spent(orders=list(orders), rdp=total, delta=delta)
    return float(eps)


_curve_folder: Path | None = None
_curve_secret = b""
CURVE_PATTERN = "rdp-*.json"


def keep_curves_in(folder: Path | None, *, secret: bytes = b"") -> None:
    """Also keep the per-step RDP curves (exact orders) as files in ``folder``
    (``None``: in memory only), authenticated with HMAC-SHA256 under ``secret``.

    A deployed site starts a fresh ClientApp process per message, which would
    otherwise recompute Opacus' curve for its run's (sigma, q) every round (~0.4 s
    on a 2-core machine). A file is used only if its sigma, q, orders and Opacus
    version equal the ones asked for and its HMAC verifies under ``secret`` (a
    secret the site holds, see :mod:`fedvault.client._ledger_cache`); any other file
    is ignored, recomputed and rewritten, so a forged or damaged cache can cost
    time but never lower an epsilon. Raises :class:`ValueError` for a folder without
    a secret of at least 16 bytes.
    """
    global _curve_folder, _curve_secret
    if folder is not None and len(secret) < 16:
        raise ValueError("the RDP curve cache needs a secret of at least 16 bytes")
    _curve_folder, _curve_secret = folder, secret


def _curve_key(sigma: float, q: float, orders: tuple[float, ...]) -> dict[str, Any]:
    import opacus

    version = opacus.__version__
    return {"sigma": sigma, "q": q, "orders": list(orders), "opacus": version}


def _mac(secret: bytes, key: Any, curve: list[float]) -> str:
    text = json.dumps([key, curve], sort_keys=True)
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


def _read_curve(path: Path, secret: bytes) -> tuple[Any, list[float]]:
    """The (key, curve) of a cache file; :class:`IntegrityError` unless it is
    well formed and its HMAC verifies under ``secret``."""
    try:
        doc = json.loads(path.read_text())
        curve = [float(x) for x in doc["curve"]]
        mac = str(doc["hmac"])
        key = doc["key"]
    except (OSError, ValueError, KeyError, TypeError):
        raise IntegrityError(f"{path.name}: unreadable cache file") from None
    if not hmac.compare_digest(mac, _mac(secret, key, curve)):
        raise IntegrityError(f"{path.name}: cache file failed authentication")
    return key, curve


def _stored_curve(path: Path, key: dict[str, Any]) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        stored_key, curve = _read_curve(path, _curve_secret)
    except IntegrityError as exc:
        logger.warning("RDP curve cache: %s; recomputed", exc)
        return None
    return np.asarray(curve, dtype=np.float64) if stored_key == key else None


def verify_curves(folder: Path, secret: bytes) -> int:
    """Check every cached curve file in ``folder`` against ``secret``; return how
    many verified. Raises :class:`IntegrityError` naming how many failed and the
    first of them (a missing folder holds nothing to check: 0)."""
    bad: list[str] = []
    good = 0
    for path in sorted(folder.glob(CURVE_PATTERN)) if folder.is_dir() else []:
        try:
            _read_curve(path, secret)
            good += 1
        except IntegrityError:
            bad.append(path.name)
    if bad:
        raise IntegrityError(
            f"{len(bad)} of {len(bad) + good} cached RDP curves in {folder} failed "
            f"authentication (first: {bad[0]}); the site ignores and recomputes them"
        )
    return good


@functools.lru_cache(maxsize=4096)
def unit_rdp(sigma: float, q: float, orders: tuple[float, ...]) -> np.ndarray:
    """Opacus' ``compute_rdp`` of one step: float64, shape (len(orders),)."""
    from opacus.accountants.analysis import rdp as analysis

    folder = _curve_folder if orders == ORDERS else None
    path = key = None
    if folder is not None:
        key = _curve_key(sigma, q, orders)
        name = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]
        path = folder / f"rdp-{name}.json"
        stored = _stored_curve(path, key)
        if stored is not None:
            return stored
    curve = np.asarray(
        analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(orders)),
        dtype=np.float64,
    )
    if path is not None and key is not None:
        values = [float(x) for x in curve]
        doc = {"key": key, "curve": values, "hmac": _mac(_curve_secret, key, values)}
        with contextlib.suppress(OSError):  # a cache: losing it costs only time
            atomic_write(path, json.dumps(doc).encode())
    return curve
