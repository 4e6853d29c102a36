"""What the sites' summaries say about their data, per site and pooled, and how a
new model version's data has shifted from its parent's (the drift check).

Only the summary fields the sites already release are read, and only here
(:func:`describe`): per numeric column ``n``/``sum``/``sumsq``/``missing`` and, in
a DP summary, the bounds ``lo``/``hi``/``asinh`` its values were clipped to and
scaled from (``sum`` is of values in [0, 1]; ``sumsq`` is NaN: not released), per
categorical column ``counts``/``missing``, ``rows``, ``labels`` and the summary's
noise std ``noise``. A run keeps these descriptions in ``received.json`` (per site
and pooled, weighted as :func:`fedvault.common.summary_moments.noise_weights`) and
the pooled one in its model file, so that the next version can compare.

A feature is flagged as shifted when

- numeric: its standardized mean shift ``|mean_new - mean_parent| / scale`` is at
  least :data:`MEAN_SHIFT` (0.25) and more than :data:`NOISE_Z` (3) stds of the two
  means' DP noise; ``scale`` is what the coordinator standardizes with: the
  released std, else the public ``STD_SHARE`` of the bounds' range (so the check
  measures in the model's input units). Means are in the bounded units (clipped,
  after asinh where the site had no declared bounds); where the two versions'
  sites bounded a column differently (other bounds, asinh on one side) the
  means are not comparable: flagged as "bounds", not measured.
  Clipping can hide part of a shift: values past a bound count as the bound, so
  the shift is a lower bound and a mean near a bound says so. Or its spread
  changed by a factor of :data:`STD_RATIO` (1.5) or more, only where both
  released a std (exact summaries: a DP summary has no second moment);
- categorical (and the label): the population stability index over its
  categories, ``sum((p_new - p_parent) * ln(p_new / p_parent))`` with shares
  floored at 1e-4, is at least :data:`PSI` (0.2, the usual "significant shift").

A parent written before pooled descriptions were kept has only its preprocessing
(means, standard deviations, categories, bounds): numeric columns are compared by
mean shift (and spread where it has a released std), categorical columns only by
categories new or gone.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedvault.common.files import atomic_write
from fedvault.common.preprocessing import STD_SHARE, Preprocessing
from fedvault.common.summary_moments import noise_weights

RECEIVED_FILE = "received.json"
DRIFT_FILE = "drift.json"
MEAN_SHIFT = 0.25
STD_RATIO = 1.5
PSI = 0.2
NOISE_Z = 3.0  # a mean shift within 3 noise stds of the two summaries is not flagged
_FLOOR = 1e-4


def describe(summary: Mapping[str, Any]) -> dict[str, Any]:
    """One site's summary as rows, label counts, numeric mean/std/missing and
    category counts (JSON-ready)."""
    return _describe(
        rows=int(summary.get("rows", 0)),
        labels=Counter({str(k): int(v) for k, v in summary["labels"].items()}),
        numeric={
            str(c): _add_numeric({}, s, 1.0, float(summary.get("noise", 0.0)))
            for c, s in summary["numeric"].items()
        },
        categorical={str(c): dict(s) for c, s in summary["categorical"].items()},
    )


def pooled(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The description of all sites' rows together."""
    labels: Counter[str] = Counter()
    numeric: dict[str, dict[str, float]] = {}
    categorical: dict[str, dict[str, Any]] = {}
    weights = noise_weights(summaries)  # as the preprocessing merge does
    for s, w in zip(summaries, weights, strict=True):
        labels.update({str(k): int(v) for k, v in s["labels"].items()})
        for col, stats in s["numeric"].items():
            noise = float(s.get("noise", 0.0))
            _add_numeric(numeric.setdefault(str(col), {}), stats, w, noise)
        for col, stats in s["categorical"].items():
            acc2 = categorical.setdefault(str(col), {"counts": Counter(), "missing": 0})
            acc2["counts"].update({str(k): int(v) for k, v in stats["counts"].items()})
            acc2["missing"] += int(stats["missing"])
    return _describe(
        rows=sum(int(s.get("rows", 0)) for s in summaries),
        labels=labels,
        numeric=numeric,
        categorical=categorical,
    )


def _add_numeric(
    acc: dict[str, Any], stats: Mapping[str, Any], weight: float, noise: float
) -> dict[str, Any]:
    """Add one site's numeric column to ``acc``: count, sum and sum of squares
    (times the site's ``weight``) in the column's bounded units (a DP summary's
    sums of values scaled to [0, 1] are mapped back to its bounds; its sum of
    squares is NaN: not released), missing count, and the bounds (widest over the
    sites) and asinh flag, and the variance of the noise on the sum (``noise``:
    the site's noise std on each released coordinate, 0 where not said)."""
    n, total, sumsq = float(stats["n"]), float(stats["sum"]), float(stats["sumsq"])
    lo, hi = float(stats.get("lo", 0.0)), float(stats.get("hi", 0.0))
    if hi > lo:
        width = hi - lo
        total, sumsq = lo * n + width * total, math.nan
        acc["noise_var"] = acc.get("noise_var", 0.0) + (weight * noise * width) ** 2
        acc["lo"] = min(lo, acc.get("lo", lo))
        acc["hi"] = max(hi, acc.get("hi", hi))
    acc["asinh"] = bool(stats.get("asinh", False)) or bool(acc.get("asinh", False))
    for key, value in (("n", n), ("sum", total), ("sumsq", sumsq)):
        acc[key] = acc.get(key, 0.0) + weight * value
    acc["missing"] = acc.get("missing", 0) + int(stats["missing"])
    return acc


def _describe(
    *,
    rows: int,
    labels: Mapping[str, int],
    numeric: Mapping[str, Mapping[str, float]],
    categorical: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    num = {}
    for col, s in sorted(numeric.items()):
        num[col] = _numeric_description(s)
    cat = {
        col: {
            "counts": {str(k): int(v) for k, v in sorted(s["counts"].items())},
            "missing": int(s["missing"]),
        }
        for col, s in sorted(categorical.items())
    }
    return {
        "rows": rows,
        "labels": {str(k): int(v) for k, v in sorted(labels.items())},
        "numeric": num,
        "categorical": cat,
    }


def _numeric_description(s: Mapping[str, Any]) -> dict[str, Any]:
    """Mean (kept within the bounds), the released std or None, the scale a shift
    is measured in (the coordinator's: the released std, else the public
    STD_SHARE of the bounds' range) and the missing count."""
    n = float(s["n"])
    lo, hi = float(s.get("lo", 0.0)), float(s.get("hi", 0.0))
    mean = float(s["sum"]) / n if n >= 1 else (lo + hi) / 2
    sumsq = float(s["sumsq"])
    std = (
        math.sqrt(max(sumsq / n - mean * mean, 0.0))
        if n >= 1 and math.isfinite(sumsq)
        else None
    )
    out: dict[str, Any] = {"mean": mean, "std": std, "missing": int(s["missing"])}
    # the std of the mean's DP noise (from the sum's; the count's is smaller)
    out["noise"] = math.sqrt(float(s.get("noise_var", 0.0))) / n if n >= 1 else 0.0
    if hi > lo:
        out["mean"] = min(max(mean, lo), hi)
        out |= {"lo": lo, "hi": hi, "asinh": bool(s.get("asinh", False))}
    out["scale"] = std if std is not None else STD_SHARE * (hi - lo) if hi > lo else 1.0
    return out


def write_received(
    root: Path, names: Sequence[str], summaries: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Write ``received.json`` (per site and pooled); returns the pooled one."""
    doc = {
        "sites": {n: describe(s) for n, s in zip(names, summaries, strict=True)},
        "pooled": pooled(summaries),
    }
    atomic_write(root / RECEIVED_FILE, (json.dumps(doc, indent=2) + "\n").encode())
    return dict(doc["pooled"])


@dataclass(frozen=True)
class Shift:
    """One compared feature (``column`` "label" for the label distribution)."""

    column: str
    kind: str  # numeric | categorical | label
    measure: str  # "mean shift" | "std ratio" | "bounds" | "PSI" | "categories"
    value: float
    flagged: bool
    detail: str


def compare(
    parent: Mapping[str, Any] | None, prep: Preprocessing, new: Mapping[str, Any]
) -> list[Shift]:
    """Every feature of ``new`` (a pooled description) against the parent's
    pooled description, or, where the parent has none, its preprocessing."""
    base = parent if parent is not None else _from_prep(prep)
    shifts = [
        _numeric(col, base["numeric"][col], stats)
        for col, stats in new["numeric"].items()
        if col in base["numeric"]
    ]
    for col, stats in new["categorical"].items():
        if col in base["categorical"]:
            shifts.append(
                _categorical(col, "categorical", base["categorical"][col], stats)
            )
    if base.get("labels"):
        shifts.append(
            _categorical(
                "label", "label", {"counts": base["labels"]}, {"counts": new["labels"]}
            )
        )
    return sorted(shifts, key=lambda s: (not s.flagged, -abs(s.value), s.column))


def _from_prep(prep: Preprocessing) -> dict[str, Any]:
    return {
        "numeric": {c: _prep_numeric(prep, i) for i, c in enumerate(prep.numeric)},
        "categorical": {
            c: {"counts": dict.fromkeys(v, 0)}
            for c, v in zip(prep.categorical, prep.vocab, strict=True)
        },
        "labels": {},
    }


def _prep_numeric(prep: Preprocessing, i: int) -> dict[str, Any]:
    """A parent's preprocessing of one numeric column as a description: with
    bounds (a DP merge) its std is the public scale, no released spread."""
    lo, hi = prep.clips[i] if i < len(prep.clips) else (0.0, 0.0)
    mean, std = prep.means[i], prep.stds[i]
    if hi > lo:
        asinh = bool(prep.asinh[i]) if i < len(prep.asinh) else False
        return {
            "mean": mean,
            "std": None,
            "scale": std,
            "lo": lo,
            "hi": hi,
            "asinh": asinh,
        }
    return {"mean": mean, "std": std, "scale": std}


def _bounds(stats: Mapping[str, Any]) -> tuple[Any, Any, bool]:
    return stats.get("lo"), stats.get("hi"), bool(stats.get("asinh"))


def _std(stats: Mapping[str, Any]) -> float | None:
    std = stats.get("std")
    return float(std) if std is not None and math.isfinite(float(std)) else None


def _numeric(col: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> Shift:
    scale = float(old.get("scale") or _std(old) or 1.0)
    before, after = float(old["mean"]), float(new["mean"])
    if "lo" in old and "lo" in new and _bounds(old) != _bounds(new):
        # Clipped to other bounds, or asinh on one side only: the means are in
        # other units (and sinh of a noisy asinh mean is no raw mean). The
        # encoding itself changed: flagged, not measured.
        detail = f"bounded as {_bounds(old)} by the parent, now {_bounds(new)}"
        return Shift(col, "numeric", "bounds", 0.0, True, detail)
    shift = (after - before) / scale
    detail = f"mean {before:.4g} -> {after:.4g} ({scale:.4g} per std)"
    noise = math.hypot(float(old.get("noise", 0.0)), float(new.get("noise", 0.0)))
    noisy = abs(shift) >= MEAN_SHIFT and abs(after - before) < NOISE_Z * noise
    if noise > 0:
        detail += f"; DP noise {noise / scale:.2g} std" + (
            ", within it" if noisy else ""
        )
    lo, hi = float(old.get("lo", 0.0)), float(old.get("hi", 0.0))
    if hi > lo and min(after - lo, hi - after) < MEAN_SHIFT * scale:
        detail += "; near a bound: values past it are clipped, the shift may be larger"
    std_old, std_new = _std(old), _std(new)
    if std_old and std_new is not None:  # both released a spread
        ratio = (std_new or 1e-12) / std_old
        detail += f", std {std_old:.4g} -> {std_new:.4g}"
        if abs(shift) < MEAN_SHIFT and max(ratio, 1 / ratio) >= STD_RATIO:
            return Shift(col, "numeric", "std ratio", ratio, True, detail)
    flagged = abs(shift) >= MEAN_SHIFT and not noisy
    return Shift(col, "numeric", "mean shift", shift, flagged, detail)


def _categorical(
    col: str, kind: str, old: Mapping[str, Any], new: Mapping[str, Any]
) -> Shift:
    before, after = dict(old["counts"]), dict(new["counts"])
    added = sorted(set(after) - set(before))
    gone = sorted(set(before) - set(after))
    detail = ", ".join(
        part
        for part in (
            f"new: {', '.join(added[:3])}" if added else "",
            f"gone: {', '.join(gone[:3])}" if gone else "",
        )
        if part
    )
    if sum(before.values()) == 0:  # the parent knew only the categories
        return Shift(col, kind, "categories", len(added), bool(added), detail)
    value = psi(before, after)
    return Shift(col, kind, "PSI", value, value >= PSI, detail)


def psi(before: Mapping[str, int], after: Mapping[str, int]) -> float:
    """Population stability index of two count tables (shares floored)."""
    keys = sorted(set(before) | set(after))
    n0, n1 = sum(before.values()) or 1, sum(after.values()) or 1
    total = 0.0
    for k in keys:
        p = max(before.get(k, 0) / n0, _FLOOR)
        q = max(after.get(k, 0) / n1, _FLOOR)
        total += (q - p) * math.log(q / p)
    return total


def write_drift(root: Path, parent: str, shifts: Sequence[Shift]) -> None:
    """Write ``drift.json``: the parent compared with and every feature's shift."""
    doc = {
        "parent": parent,
        "thresholds": {"mean_shift": MEAN_SHIFT, "std_ratio": STD_RATIO, "psi": PSI},
        "features": [asdict(s) for s in shifts],
    }
    atomic_write(root / DRIFT_FILE, (json.dumps(doc, indent=2) + "\n").encode())


def read_drift(root: Path) -> dict[str, Any] | None:
    """The run's ``drift.json``, or None (no parent, or unreadable)."""
    try:
        doc = json.loads((root / DRIFT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def flagged_lines(root: Path) -> list[str]:
    """One line per shifted feature of the run in ``root`` (for the CLI)."""
    doc = read_drift(root)
    if doc is None:
        return []
    return [
        f"drift: {f['column']} ({f['kind']}) {f['measure']} {f['value']:.3g}"
        + (f"; {f['detail']}" if f["detail"] else "")
        for f in doc.get("features", [])
        if f.get("flagged")
    ]
