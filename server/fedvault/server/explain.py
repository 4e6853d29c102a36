"""Which input columns drive a trained model: permutation importance
(scikit-learn's ``permutation_importance``) on a labelled file the user gives.

Each column of the records (before preprocessing: a categorical column counts once,
not per one-hot feature) is shuffled ``repeats`` times; its importance is how much
the score drops on average. It describes the model on that file, not the data at
the sites, and correlated columns share their importance.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedvault.common.errors import DataError
from fedvault.common.files import atomic_write
from fedvault.server.trained import TrainedModel, features, labels, target_values

JSON_FILE = "importance.json"
PNG_FILE = "importance.png"


class Metric(StrEnum):
    ACCURACY = "accuracy"
    AUC = "auc"
    LOG_LOSS = "log-loss"
    R2 = "r2"
    MAE = "mae"


CLASSIFICATION_METRICS = (Metric.ACCURACY, Metric.AUC, Metric.LOG_LOSS)
REGRESSION_METRICS = (Metric.R2, Metric.MAE)
# scores where lower is better: permutation_importance maximizes, so they are negated
_LOSSES = (Metric.LOG_LOSS, Metric.MAE)


@dataclass(frozen=True)
class Importance:
    column: str
    mean: float
    std: float


@dataclass(frozen=True)
class Explanation:
    """Columns ranked by importance, and what it was computed on."""

    computed_on: str
    rows: int
    metric: Metric
    baseline: float
    repeats: int
    columns: tuple[Importance, ...]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["metric"] = str(self.metric)
        data["method"] = (
            "permutation importance (scikit-learn): mean drop of the score when "
            "one column's values are shuffled"
        )
        return data


class _Model:
    """The trained model as scikit-learn's permutation_importance wants it:
    records in, probabilities out (the run's preprocessing inside)."""

    def __init__(self, trained: TrainedModel) -> None:
        self.trained = trained

    def fit(self, x: pd.DataFrame, y: np.ndarray) -> _Model:
        return self

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        prep = self.trained.prep
        return self.trained.probabilities(prep.transform(x))

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        """Regression: the predicted target in its own units."""
        return self.trained.values(self.trained.prep.transform(x))


def _scorer(metric: Metric, classes: int) -> Callable[[_Model, Any, Any], float]:
    from sklearn.metrics import (
        log_loss,
        mean_absolute_error,
        r2_score,
        roc_auc_score,
    )

    def score(model: _Model, x: pd.DataFrame, y: np.ndarray) -> float:
        if metric is Metric.R2:
            return float(r2_score(y, model.predict(x)))
        if metric is Metric.MAE:
            return -float(mean_absolute_error(y, model.predict(x)))
        proba = model.predict_proba(x)
        if metric is Metric.ACCURACY:
            return float(np.mean(proba.argmax(axis=1) == y))
        if metric is Metric.LOG_LOSS:
            return -float(log_loss(y, proba, labels=list(range(classes))))
        if classes == 2:
            return float(roc_auc_score(y, proba[:, 1]))
        return float(roc_auc_score(y, proba, multi_class="ovr"))

    return score


def explain(
    trained: TrainedModel,
    frame: pd.DataFrame,
    *,
    source: str,
    metric: Metric | None = None,
    repeats: int = 10,
    seed: int = 0,
) -> Explanation:
    """Permutation importance of every input column on a labelled frame; the
    metric defaults to accuracy (regression: R²).

    Raises:
        DataError: the frame does not fit the model, has no labels, a metric of
            the other kind of task, or (for AUC) a class missing.
    """
    from sklearn.inspection import permutation_importance

    prep = trained.prep
    metric = metric or (Metric.R2 if prep.regression else Metric.ACCURACY)
    allowed = REGRESSION_METRICS if prep.regression else CLASSIFICATION_METRICS
    if metric not in allowed:
        raise DataError(
            f"metric: {metric} does not measure a {prep.task} model; use one of "
            f"{', '.join(allowed)}"
        )
    features(prep, frame, source=source)  # schema check, one line on failure
    if prep.regression:
        y = target_values(prep, frame, source=source)
    else:
        y = labels(prep, frame, source=source)
    if metric is Metric.AUC and len(np.unique(y)) < prep.num_classes:
        raise DataError(f"{source}: AUC needs every class among the labels")
    if repeats < 1:
        raise DataError(f"repeats: must be >= 1, got {repeats}")
    columns = [*prep.numeric, *prep.categorical]
    x = frame[columns].reset_index(drop=True)
    model, score = _Model(trained), _scorer(metric, prep.num_classes)
    threads = torch.get_num_threads()
    # hundreds of small forward passes: one thread avoids their sync overhead
    torch.set_num_threads(1)
    try:
        result = permutation_importance(
            model, x, y, scoring=score, n_repeats=repeats, random_state=seed
        )
    finally:
        torch.set_num_threads(threads)
    ranked = sorted(
        (
            Importance(c, float(m), float(s))
            for c, m, s in zip(
                columns, result.importances_mean, result.importances_std, strict=True
            )
        ),
        key=lambda i: (-i.mean, i.column),
    )
    baseline = score(model, x, y)
    baseline = -baseline if metric in _LOSSES else baseline
    return Explanation(
        computed_on=source,
        rows=len(frame),
        metric=metric,
        baseline=baseline,
        repeats=repeats,
        columns=tuple(ranked),
    )


def chart(explanation: Explanation, *, top: int = 20) -> bytes:
    """A horizontal bar chart (PNG) of the ``top`` columns, with one standard
    deviation over the repeats as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = explanation.columns[:top][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(shown) + 1.6), dpi=100)
    ax.barh(
        [i.column for i in shown],
        [i.mean for i in shown],
        xerr=[i.std for i in shown],
        color="#3b6ea8",
    )
    ax.axvline(0, color="black", linewidth=0.8)
    change = "rise" if explanation.metric is Metric.MAE else "drop"
    ax.set_xlabel(f"{change} in {explanation.metric} when the column is shuffled")
    ax.set_title(
        f"Permutation importance on {explanation.rows} rows of "
        f"{Path(explanation.computed_on).name}",
        fontsize=10,
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write(explanation: Explanation, out: Path, *, top: int = 20) -> tuple[Path, Path]:
    """Write ``importance.json`` and ``importance.png`` into ``out``."""
    png = chart(explanation, top=top)
    text = json.dumps(explanation.to_json(), indent=2) + "\n"
    atomic_write(out / JSON_FILE, text.encode())
    atomic_write(out / PNG_FILE, png)
    return out / JSON_FILE, out / PNG_FILE
