"""The metrics of a model card with 95 % confidence intervals, on a labelled test
set: accuracy (Wilson score interval), ROC AUC (Hanley-McNeil standard error for a
binary task) and log loss for classification; MAE, RMSE and R² for regression, each
with a percentile bootstrap interval (1,000 resamples of the test rows, seed 0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from fedvault.server.trained import TrainedModel, features, labels, target_values

Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_METHOD = "percentile bootstrap, 1,000 resamples of the test rows"


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    from scipy.stats import binomtest  # type: ignore[import-untyped]

    ci = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def auc_interval(auc: float, positives: int, negatives: int) -> tuple[float, float]:
    """95 % interval of a binary ROC AUC from Hanley & McNeil's (1982) standard
    error, clipped to [0, 1]."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (
        auc * (1 - auc)
        + (positives - 1) * (q1 - auc * auc)
        + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    se = math.sqrt(max(var, 0.0))
    return max(0.0, auc - Z95 * se), min(1.0, auc + Z95 * se)


def test_metrics(
    trained: TrainedModel, frame: pd.DataFrame, source: str
) -> dict[str, Any]:
    """Accuracy and AUC (regression: MAE, RMSE, R²) with 95 % intervals on a
    labelled frame (an image model's: a ``pixels`` column and the target).

    Raises:
        DataError: the frame does not fit the model or lacks labels.
    """
    from sklearn.metrics import log_loss, roc_auc_score

    if trained.image:
        x = trained.prep.transform(frame)
    else:
        x, _ = features(trained.prep, frame, source=source)
    if trained.regression:
        truth = target_values(trained.prep, frame, source=source)
        return regression_metrics(truth, trained.values(x), source)
    y = labels(trained.prep, frame, source=source)
    proba = trained.probabilities(x)
    n, k = len(y), trained.prep.num_classes
    correct = int((proba.argmax(axis=1) == y).sum())
    low, high = wilson(correct, n)
    out: dict[str, Any] = {
        "data": source,
        "rows": n,
        "class_counts": {
            label: int((y == i).sum()) for i, label in enumerate(trained.prep.labels)
        },
        "accuracy": correct / n,
        "accuracy_ci95": [low, high],
        "accuracy_ci_method": "Wilson score interval",
        "log_loss": float(log_loss(y, proba, labels=list(range(k)))),
        "auc": None,
        "auc_ci95": None,
    }
    if len(np.unique(y)) == k:
        if k == 2:
            auc = float(roc_auc_score(y, proba[:, 1]))
            positives = int(y.sum())
            out["auc_ci95"] = list(auc_interval(auc, positives, n - positives))
            out["auc_ci_method"] = "Hanley-McNeil standard error"
        else:
            auc = float(roc_auc_score(y, proba, multi_class="ovr"))
            out["auc_ci_method"] = "none for a multi-class (one-vs-rest) AUC"
        out["auc"] = auc
    return out


def regression_metrics(
    truth: np.ndarray, predicted: np.ndarray, source: str
) -> dict[str, Any]:
    """MAE, RMSE and R² (in the target's units) with bootstrap 95 % intervals."""
    out: dict[str, Any] = {"data": source, "rows": len(truth), "task": "regression"}
    for name, fn in _REGRESSION.items():
        out[name] = fn(truth, predicted)
        out[f"{name}_ci95"] = list(bootstrap_interval(truth, predicted, fn))
        out[f"{name}_ci_method"] = BOOTSTRAP_METHOD
    return out


def _mae(truth: np.ndarray, guess: np.ndarray) -> float:
    return float(np.abs(guess - truth).mean())


def _rmse(truth: np.ndarray, guess: np.ndarray) -> float:
    return math.sqrt(float(((guess - truth) ** 2).mean()))


def _r2(truth: np.ndarray, guess: np.ndarray) -> float:
    spread = float(((truth - truth.mean()) ** 2).sum())
    return 1.0 - float(((guess - truth) ** 2).sum()) / spread if spread else math.nan


_REGRESSION = {"mae": _mae, "rmse": _rmse, "r2": _r2}


def bootstrap_interval(
    truth: np.ndarray,
    guess: np.ndarray,
    metric: Any,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """95 % percentile bootstrap interval of ``metric(truth, guess)`` over
    resamples of the rows (with replacement)."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    values = []
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        values.append(metric(truth[rows], guess[rows]))
    finite = np.asarray([v for v in values if math.isfinite(v)])
    if not len(finite):
        return (math.nan, math.nan)
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)
