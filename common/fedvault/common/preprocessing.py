"""Federated preprocessing: sites share summary counts, never rows.

Each site computes :func:`site_summary` on its own training rows (per numeric column:
non-missing count, sum, sum of squares, missing count; per categorical column: counts
per category; counts per label). The coordinator merges them with
:func:`merge_summaries` into one :class:`Preprocessing` (impute by global mean/mode,
one-hot with the global vocabulary, standardize with the global mean/std), which every
site then applies and which is saved with the model.

A site releases its summary through a Gaussian mechanism on bounded contributions
(:mod:`fedvault.client.releases`): the counts and sums are noisy, and each numeric
column carries the bounds ``lo``/``hi`` its values were clipped to (after ``asinh``
for a column without declared bounds) and scaled from, to [0, 1]. Everything the
coordinator derives from them here is post-processing. :func:`site_summary` (exact)
is the building block for tests and for data that never leaves one party.

Images (:mod:`fedvault.common.image_table`): row and label counts and the shape only.
A regression target is summarized like a numeric column, in place of label counts.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedvault.common.errors import DataError
from fedvault.common.image_table import PIXELS, ImageShape, pixels_array
from fedvault.common.model_zoo import InputSpec

# the summary's keys and public scales, defined beside the merge's arithmetic
from fedvault.common.summary_moments import IMAGE_SHAPE as IMAGE_SHAPE
from fedvault.common.summary_moments import STD_SHARE as STD_SHARE
from fedvault.common.summary_moments import TARGET_SPREAD as TARGET_SPREAD
from fedvault.common.summary_moments import TARGET_STATS as TARGET_STATS
from fedvault.common.summary_moments import (
    label_key,
    moments,
    noise_weights,
    task_and_shape,
)


def _is_numeric(series: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(series)) and not bool(
        pd.api.types.is_bool_dtype(series)
    )


def site_summary(
    frame: pd.DataFrame,
    target: str,
    *,
    regression: bool = False,
    image_shape: ImageShape | None = None,
) -> dict[str, Any]:
    """Summary counts of one site's rows (JSON-ready). ``image_shape``: the rows
    are images (only row and label counts, and the shape, are summarized);
    ``regression``: the target is summarized by count, sum and sum of squares."""
    numeric: dict[str, dict[str, float]] = {}
    categorical: dict[str, dict[str, Any]] = {}
    for name in frame.columns:
        if name == target or image_shape is not None:
            continue
        col = frame[name]
        missing = int(col.isna().sum())
        if _is_numeric(col):
            values = col.dropna().to_numpy(dtype=np.float64)
            numeric[str(name)] = {
                "n": len(values),
                "sum": float(values.sum()),
                "sumsq": float(np.square(values).sum()),
                "missing": missing,
            }
        else:
            counts = col.dropna().astype(str).value_counts()
            categorical[str(name)] = {
                "counts": {str(k): int(v) for k, v in counts.items()},
                "missing": missing,
            }
    summary: dict[str, Any] = {
        "rows": len(frame),
        "labels": {},
        "numeric": numeric,
        "categorical": categorical,
    }
    if regression:
        y = pd.to_numeric(frame[target], errors="coerce").dropna()
        values = y.to_numpy(dtype=np.float64)
        summary[TARGET_STATS] = {
            "n": len(values),
            "sum": float(values.sum()),
            "sumsq": float(np.square(values).sum()),
        }
    else:
        labels = frame[target].astype(str).value_counts()
        summary["labels"] = {str(k): int(v) for k, v in labels.items()}
    if image_shape is not None:
        summary[IMAGE_SHAPE] = list(image_shape)
    return summary


@dataclass(frozen=True)
class Preprocessing:
    """One global preprocessing, applied identically at every site and the server."""

    target: str
    labels: tuple[str, ...]
    numeric: tuple[str, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    categorical: tuple[str, ...] = ()
    vocab: tuple[tuple[str, ...], ...] = ()
    modes: tuple[str, ...] = ()
    rows: int = 0
    # "regression": ``labels`` is empty and the target is standardized with
    # ``target_mean`` / ``target_std``; images: ``image_shape`` is (c, h, w).
    task: str = "classification"
    image_shape: tuple[int, ...] = ()
    target_mean: float = 0.0
    target_std: float = 1.0
    # Per numeric column: the clipping bounds (lo == hi: none) and whether values
    # are first mapped by asinh (columns without declared bounds).
    clips: tuple[tuple[float, float], ...] = ()
    asinh: tuple[bool, ...] = ()
    feature_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = list(self.numeric)
        for col, cats in zip(self.categorical, self.vocab, strict=True):
            names.extend(f"{col}={c}" for c in cats)
        object.__setattr__(self, "feature_names", tuple(names))

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @property
    def input_spec(self) -> InputSpec:
        """What one input sample is: the image shape, or the feature count."""
        if self.image_shape:
            c, h, w = self.image_shape
            return InputSpec.image(c, h, w)
        return InputSpec.tabular(self.num_features)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Impute, one-hot encode and standardize; returns float32 of shape
        (len(frame), num_features), or (len(frame), c, h, w) for images. Raises
        :class:`DataError` naming missing columns."""
        if self.image_shape:
            if PIXELS not in frame:
                raise DataError("the site's data holds no images (pixels column)")
            c, h, w = self.image_shape
            return pixels_array(frame[PIXELS], (c, h, w))
        missing = [c for c in (*self.numeric, *self.categorical) if c not in frame]
        if missing:
            raise DataError(f"columns missing from the site's data: {missing}")
        parts = []
        if self.numeric:
            num = frame[list(self.numeric)].apply(pd.to_numeric, errors="coerce")
            values = self._bounded(num.to_numpy(dtype=np.float64, copy=True))
            means = np.asarray(self.means)
            values = np.where(np.isnan(values), means, values)
            parts.append((values - means) / np.asarray(self.stds))
        for col, cats, mode in zip(
            self.categorical, self.vocab, self.modes, strict=True
        ):
            series = frame[col].astype("string").fillna(mode).astype(str)
            index = {c: i for i, c in enumerate(cats)}
            onehot = np.zeros((len(frame), len(cats)))
            codes = series.map(index)
            rows = codes.notna().to_numpy()
            onehot[np.nonzero(rows)[0], codes[rows].astype(int).to_numpy()] = 1.0
            parts.append(onehot)
        if not parts:
            return np.zeros((len(frame), 0), dtype=np.float32)
        return np.hstack(parts).astype(np.float32)

    def _bounded(self, values: np.ndarray) -> np.ndarray:
        for j, flag in enumerate(self.asinh):
            if flag:
                values[:, j] = np.arcsinh(values[:, j])
        for j, (lo, hi) in enumerate(self.clips):
            if hi > lo:
                values[:, j] = np.clip(values[:, j], lo, hi)
        return values

    def encode_labels(self, series: pd.Series) -> np.ndarray:
        """Map labels to 0..K-1 with the global label list: int64, shape (n,).
        Raises :class:`DataError` naming labels outside the federation's set.
        Regression: the standardized target, float32 of shape (n,)."""
        if self.regression:
            y = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
            if np.isnan(y).any():
                raise DataError("the regression target holds non-numeric values")
            return ((y - self.target_mean) / self.target_std).astype(np.float32)
        index = {label: i for i, label in enumerate(self.labels)}
        codes = series.astype(str).map(index)
        if codes.isna().any():
            unknown = sorted(set(series.astype(str)) - set(index))[:5]
            raise DataError(f"labels not in the federation's label set: {unknown}")
        return np.array(codes.to_numpy(dtype=np.int64), copy=True)  # writable

    def to_json(self) -> str:
        data = {
            k: getattr(self, k)
            for k in (
                "target",
                "labels",
                "numeric",
                "means",
                "stds",
                "categorical",
                "vocab",
                "modes",
                "rows",
                "task",
                "image_shape",
                "target_mean",
                "target_std",
                "clips",
                "asinh",
            )
        }
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        data = json.loads(text)
        return cls(
            target=data["target"],
            labels=tuple(data["labels"]),
            numeric=tuple(data["numeric"]),
            means=tuple(float(v) for v in data["means"]),
            stds=tuple(float(v) for v in data["stds"]),
            categorical=tuple(data["categorical"]),
            vocab=tuple(tuple(v) for v in data["vocab"]),
            modes=tuple(data["modes"]),
            rows=int(data["rows"]),
            task=str(data.get("task", "classification")),
            image_shape=tuple(int(v) for v in data.get("image_shape", ())),
            target_mean=float(data.get("target_mean", 0.0)),
            target_std=float(data.get("target_std", 1.0)),
            clips=tuple((float(a), float(b)) for a, b in data.get("clips", ())),
            asinh=tuple(bool(v) for v in data.get("asinh", ())),
        )


def merge_summaries(summaries: list[dict[str, Any]], target: str) -> Preprocessing:
    """Merge site summaries into the global preprocessing.

    Raises :class:`DataError` when sites disagree on a column's kind or on columns.
    """
    if not summaries:
        raise DataError("no site summaries to merge")
    numeric_cols = set(summaries[0]["numeric"])
    categorical_cols = set(summaries[0]["categorical"])
    for s in summaries[1:]:
        if (
            set(s["numeric"]) != numeric_cols
            or set(s["categorical"]) != categorical_cols
        ):
            diff = (numeric_cols ^ set(s["numeric"])) | (
                categorical_cols ^ set(s["categorical"])
            )
            raise DataError(f"sites disagree on columns or their kind: {sorted(diff)}")
    task, shape, target_mean, target_std = task_and_shape(summaries)
    labels: Counter[str] = Counter()
    for s in summaries:
        labels.update(s["labels"])
    numeric = sorted(numeric_cols)
    weights = noise_weights(summaries)
    means, stds, clips, asinh = [], [], [], []
    for col in numeric:
        columns = [s["numeric"][col] for s in summaries]
        mean, std, bounds, flag = moments(columns, col, weights)
        means.append(mean)
        stds.append(std)
        clips.append(bounds)
        asinh.append(flag)
    categorical = sorted(categorical_cols)
    vocab, modes = [], []
    for col in categorical:
        counts: Counter[str] = Counter()
        for s in summaries:
            counts.update(s["categorical"][col]["counts"])
        cats = tuple(sorted(counts))
        vocab.append(cats)
        modes.append(min(cats, key=lambda c: (-counts[c], c)) if cats else "")
    return Preprocessing(
        target=target,
        labels=() if task == "regression" else tuple(sorted(labels, key=label_key)),
        numeric=tuple(numeric),
        means=tuple(means),
        stds=tuple(stds),
        categorical=tuple(categorical),
        vocab=tuple(vocab),
        modes=tuple(modes),
        rows=sum(int(s["rows"]) for s in summaries),
        clips=tuple(clips),
        asinh=tuple(asinh),
        task=task,
        image_shape=shape,
        target_mean=target_mean,
        target_std=target_std,
    )
