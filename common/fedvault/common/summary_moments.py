"""The arithmetic of merging site summaries: noise weights, a numeric column's pooled
moments, the task, image shape and target scale the sites agree on.

Used by :func:`fedvault.common.preprocessing.merge_summaries`; every figure here is
post-processing of what the sites released.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedvault.common.errors import DataError

TARGET_STATS = "target-stats"
IMAGE_SHAPE = "image-shape"

# The scale of a numeric column whose second moment a site did not release (a DP
# summary): this share of its bounds' range. A public constant, chosen as the median
# std/range over the embedded (public) dataset's features, 0.076 to 0.226 (a range
# of +-3 standard deviations would give 1/6).
STD_SHARE = 0.14
TARGET_SPREAD = 0.5  # a regression target's public std in asinh units (no bounds)


def noise_weights(summaries: Sequence[Mapping[str, Any]]) -> list[float]:
    """Each site's weight in a numeric column's pooled sums: inverse to the
    variance of its summary's noise (``noise``, the std on each coordinate),
    relative to the least noisy site's, so that a site releasing at a tiny budget
    (hundreds of times the noise) does not swamp the others' means. All 1 where
    any site did not say (exact summaries, releases kept from before)."""
    noise = [float(s.get("noise", 0.0) or 0.0) for s in summaries]
    if not noise or min(noise) <= 0.0:
        return [1.0] * len(summaries)
    least = min(noise)
    return [(least / v) ** 2 for v in noise]


def moments(
    columns: list[dict[str, Any]], name: str, weights: list[float] | None = None
) -> tuple[float, float, tuple[float, float], bool]:
    """Mean and std of one numeric column over the sites, its bounds and asinh flag.

    A site's bounded column (``hi > lo``) holds noisy sums of values scaled to
    [0, 1]; they are mapped back first. With bounds the mean is kept within them.
    Each site's count and sums are weighted (``weights``, see
    :func:`noise_weights`; the mean is a ratio, so equal weights change nothing).
    A DP summary releases no second moment (``sumsq`` NaN): the std is then
    :data:`STD_SHARE` of the bounds' range; a bounded summary that has one keeps
    its std within [range/10, range/5] (the noise cannot make it absurd).
    Raises :class:`DataError` when sites disagree on asinh.
    """
    flags = {bool(c.get("asinh", False)) for c in columns}
    if len(flags) > 1:
        raise DataError(f"sites disagree on how column {name!r} is bounded")
    n = total = sumsq = 0.0
    lows, highs = [], []
    for c, w in zip(columns, weights or [1.0] * len(columns), strict=True):
        lo, hi = float(c.get("lo", 0.0)), float(c.get("hi", 0.0))
        count, s, q = w * float(c["n"]), w * float(c["sum"]), w * float(c["sumsq"])
        if hi > lo:
            width = hi - lo
            lows.append(lo)
            highs.append(hi)
            s, q = (
                lo * count + width * s,
                lo * lo * count + 2 * lo * width * s + (width * width * q),
            )
        n, total, sumsq = n + count, total + s, sumsq + q
    mean = total / n if n >= 1 else 0.0
    std = math.sqrt(max(sumsq / n - mean * mean, 0.0)) if n >= 1 else 0.0
    if not math.isfinite(sumsq) and lows and max(highs) > min(lows):
        # No second moment released (a DP summary): the public scale.
        lo, hi = min(lows), max(highs)
        mean = min(max(mean, lo), hi) if n >= 1 else (lo + hi) / 2
        return mean, STD_SHARE * (hi - lo), (lo, hi), flags.pop()
    bounds = (min(lows), max(highs)) if lows else (0.0, 0.0)
    lo, hi = bounds
    if hi > lo:
        mean = min(max(mean, lo), hi) if n >= 1 else (lo + hi) / 2
        std = min(max(std, (hi - lo) / 10), (hi - lo) / 5)
    return mean, (std if std > 1e-12 else 1.0), bounds, flags.pop()


def task_and_shape(summaries: list[dict[str, Any]]) -> tuple[str, Any, float, float]:
    """The task, image shape and target scale the sites' summaries agree on.
    Raises :class:`DataError` when sites disagree on the task or the shape."""
    kinds = {TARGET_STATS in s for s in summaries}
    shapes = {tuple(s.get(IMAGE_SHAPE, ())) for s in summaries}
    if len(kinds) > 1:
        raise DataError("sites disagree on the task (regression or classification)")
    if len(shapes) > 1:
        raise DataError(f"sites disagree on the image shape: {sorted(shapes)}")
    if kinds != {True}:
        return "classification", shapes.pop(), 0.0, 1.0
    mean, std = _target_scale([s[TARGET_STATS] for s in summaries])
    return "regression", shapes.pop(), mean, std


def _target_scale(targets: list[dict[str, Any]]) -> tuple[float, float]:
    """A regression target's mean and std: exact, or as a numeric column's (noisy,
    ``hi > lo``), with :data:`TARGET_SPREAD` after asinh."""
    if all(float(t.get("hi", 0.0)) <= float(t.get("lo", 0.0)) for t in targets):
        n = sum(t["n"] for t in targets)
        mean = sum(t["sum"] for t in targets) / n if n else 0.0
        sumsq = sum(t["sumsq"] for t in targets)
        std = math.sqrt(max(sumsq / n - mean * mean, 0.0)) if n else 0.0
        return mean, std if std > 1e-12 else 1.0
    mean, std, _, asinh = moments(targets, "the target")
    if asinh:
        spread = math.sinh(mean + TARGET_SPREAD) - math.sinh(mean - TARGET_SPREAD)
        return math.sinh(mean), spread / 2
    return mean, std


def label_key(label: str) -> tuple[int, float, str]:
    """Sort numeric-looking labels numerically, others alphabetically."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)
