"""The Gaussian mechanism behind a site's preprocessing summary (hazmat).

Do not call this directly: :mod:`fedvault.client.releases` plans its noise, charges
it to the site's ledger and keeps the release. What it computes, per site:

- every training row contributes one vector: 1 (the row count), a one-hot of its
  label, per numeric column (missing?, u) with u the value clipped to the column's
  bounds and scaled to [0, 1], per categorical column a one-hot of its value. No
  second moment: at a small site's budget its noise would swamp the variance, so
  the coordinator takes a public scale instead
  (:data:`fedvault.common.preprocessing.STD_SHARE` of the bounds' range) and the
  sum of squares is released as NaN (nothing);
- each row's vector is clipped to L2 norm :data:`ROW_CLIP` (add/remove one row
  changes the sum by at most that: the L2 sensitivity);
- N(0, (sigma * ROW_CLIP)**2) is added to every coordinate of the sum. This is one
  Gaussian release with noise multiplier sigma: the RDP of one DP-SGD step at
  sample rate 1, which is how the ledger records it.

Bounds: the schema's ``min``/``max`` where declared; otherwise the value is first
mapped by ``asinh`` and clipped to +-:data:`ASINH_BOUND` (a fixed range: values up
to about 11,000 in magnitude keep their order). Category keys: the schema's
declared categories, released with noisy counts; an undeclared key only if its
noisy count passes a threshold a single row reaches with probability below
:data:`KEY_DELTA` (a lone code never does). Labels alike. A non-numeric column whose
values are mostly distinct is identifier-like: it is not a category and is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from fedvault.common.preprocessing import IMAGE_SHAPE, TARGET_STATS

ROW_CLIP = 2.0
ASINH_BOUND = 10.0
KEY_DELTA = 1e-9
IDENTIFIER_SHARE = 0.5  # distinct values / non-missing values above this


@dataclass(frozen=True)
class Declared:
    """What the site's schema declares: numeric bounds and category lists."""

    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _is_numeric(series: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(series)) and not bool(
        pd.api.types.is_bool_dtype(series)
    )


def identifier_like(series: pd.Series) -> bool:
    """A non-numeric column whose values are mostly distinct (names, ids)."""
    values = series.dropna().astype(str)
    return len(values) >= 2 and values.nunique() > IDENTIFIER_SHARE * len(values)


def _scaled(series: pd.Series, bounds: tuple[float, float] | None) -> np.ndarray:
    values = series.to_numpy(dtype=np.float64)
    if bounds is None:
        lo, hi = -ASINH_BOUND, ASINH_BOUND
        values = np.arcsinh(values)
    else:
        lo, hi = bounds
    if hi <= lo:
        return np.where(np.isnan(values), np.nan, 0.0)
    scaled: np.ndarray = (np.clip(values, lo, hi) - lo) / (hi - lo)
    return scaled


def noisy_summary(
    frame: pd.DataFrame,
    target: str,
    *,
    declared: Declared,
    sigma: float,
    rng: np.random.Generator,
    regression: bool = False,
    image_shape: tuple[int, ...] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The noisy summary (``site_summary``'s shape, plus each numeric column's
    ``lo``/``hi``/``scale``) and the identifier-like columns it dropped.
    ``regression``: the target is one bounded numeric value in each row's vector
    (no labels); ``image_shape``: only rows and labels are summarized (the shape,
    a property the site's data declares, is sent as it is)."""
    # In the order _read takes them apart: count, labels (or the regression
    # target), numeric, categorical.
    parts: list[np.ndarray] = [np.ones((len(frame), 1))]
    cat_parts: list[np.ndarray] = []
    labels: tuple[str, ...] = ()
    if regression:
        y = _scaled(pd.to_numeric(frame[target]), declared.bounds.get(target))
        parts.append(np.where(np.isnan(y), 0.0, y)[:, None])
    else:
        labels = _keys(frame[target], declared.categories.get(target))
        parts.append(_onehot(frame[target], labels))
    numeric, categorical, dropped = [], [], []
    for name in frame.columns:
        if name == target or image_shape is not None:
            continue
        col = frame[name]
        if _is_numeric(col):
            u = _scaled(col, declared.bounds.get(str(name)))
            missing = np.isnan(u)
            u = np.where(missing, 0.0, u)
            parts.append(np.stack([missing.astype(float), u], axis=1))
            numeric.append(str(name))
        elif str(name) not in declared.categories and identifier_like(col):
            dropped.append(str(name))
        else:
            keys = _keys(col, declared.categories.get(str(name)))
            cat_parts.append(_onehot(col, keys))
            categorical.append((str(name), keys, str(name) in declared.categories))
    rows = np.hstack(parts + cat_parts)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows * np.minimum(1.0, ROW_CLIP / np.maximum(norms, 1e-12))
    noisy = rows.sum(axis=0) + rng.normal(0.0, sigma * ROW_CLIP, rows.shape[1])
    columns = np.delete(noisy, 1) if regression else noisy  # the target's sum
    summary = _read(columns, target, labels, numeric, categorical, declared, sigma)
    if regression:
        summary[TARGET_STATS] = _target(noisy[1], summary["rows"], declared, target)
    if image_shape is not None:
        summary[IMAGE_SHAPE] = list(image_shape)
    return summary, dropped


def _target(total: float, rows: int, declared: Declared, target: str) -> dict[str, Any]:
    bounds = declared.bounds.get(target)
    lo, hi = bounds if bounds is not None else (-ASINH_BOUND, ASINH_BOUND)
    return {
        "n": rows,
        "sum": float(total),
        "sumsq": math.nan,  # not released (module docstring)
        "lo": float(lo),
        "hi": float(hi),
        "asinh": bounds is None,
    }


def _keys(series: pd.Series, declared: tuple[str, ...] | None) -> tuple[str, ...]:
    if declared is not None:
        return declared
    return tuple(sorted(series.dropna().astype(str).unique()))


def _onehot(series: pd.Series, keys: tuple[str, ...]) -> np.ndarray:
    index = {k: i for i, k in enumerate(keys)}
    out = np.zeros((len(series), len(keys)))
    for row, value in enumerate(series.tolist()):
        if not pd.isna(value) and str(value) in index:
            out[row, index[str(value)]] = 1.0
    return out


def _threshold(sigma: float) -> float:
    """A key one row holds passes this with probability below KEY_DELTA."""
    return 1.0 + sigma * ROW_CLIP * NormalDist().inv_cdf(1.0 - KEY_DELTA)


def _counts(values: np.ndarray, keys: tuple[str, ...], tau: float) -> dict[str, int]:
    """Declared keys (tau = -inf) always; undeclared ones only above tau."""
    return {k: max(0, round(v)) for k, v in zip(keys, values, strict=True) if v > tau}


def _read(
    noisy: np.ndarray,
    target: str,
    labels: tuple[str, ...],
    numeric: list[str],
    categorical: list[tuple[str, tuple[str, ...], bool]],
    declared: Declared,
    sigma: float,
) -> dict[str, Any]:
    tau = _threshold(sigma)
    rows = max(0, round(noisy[0]))
    at = 1
    label_tau = -math.inf if target in declared.categories else tau
    summary: dict[str, Any] = {
        "rows": rows,
        "labels": _counts(noisy[at : at + len(labels)], labels, label_tau),
        "numeric": {},
        "categorical": {},
        "noise": sigma * ROW_CLIP,  # public: the mechanism's, for weighting
    }
    at += len(labels)
    for name in numeric:
        missing, total = noisy[at : at + 2]
        at += 2
        bounds = declared.bounds.get(name)
        lo, hi = bounds if bounds is not None else (-ASINH_BOUND, ASINH_BOUND)
        summary["numeric"][name] = {
            "n": max(0, rows - max(0, round(missing))),
            "sum": float(total),
            "sumsq": math.nan,  # not released (module docstring)
            "missing": max(0, round(missing)),
            "lo": float(lo),
            "hi": float(hi),
            "asinh": bounds is None,
        }
    for name, keys, is_declared in categorical:
        values = noisy[at : at + len(keys)]
        at += len(keys)
        counts = _counts(values, keys, -math.inf if is_declared else tau)
        summary["categorical"][name] = {
            "counts": counts,
            "missing": max(0, rows - sum(counts.values())),
        }
    return summary
