"""Metrics of a model on labelled data (same code at the sites and the coordinator)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedvault.common.config import RegressionLoss
from fedvault.common.models import (
    Task,
    loss_fn,
    predict_proba,
    targets_for_loss,
    task_for,
)

_NAN = float("nan")
_CLASSIFICATION = ("loss", "accuracy", "auc")
_REGRESSION = ("loss", "mae", "rmse", "r2")


@dataclass(frozen=True)
class Metrics:
    """What a task is measured by; the metrics of the other kind of task are NaN.

    Classification: ``loss``, ``accuracy``, ``auc``. Regression: ``loss`` (on the
    targets as given), ``mae``, ``rmse`` (in the original units, see
    :func:`evaluate`) and ``r2``.
    """

    loss: float
    accuracy: float
    auc: float
    examples: int
    mae: float = _NAN
    rmse: float = _NAN
    r2: float = _NAN
    task: Task | None = None

    def values(self) -> dict[str, float]:
        """The metrics the task has, by name (``loss`` first)."""
        names = _REGRESSION if self.task == "regression" else _CLASSIFICATION
        return {name: float(getattr(self, name)) for name in names}


def evaluate(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    device: torch.device | None = None,
    task: Task | None = None,
    regression_loss: RegressionLoss = "mse",
    target_scale: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 4096,
) -> Metrics:
    """Classification: loss, accuracy and ROC AUC (one-vs-rest for multi-class; NaN
    if a class is absent). Regression: loss, MAE, RMSE and R².

    ``features`` has shape (n, *input shape); ``labels`` holds class indices, or
    numbers for regression. The model sees ``batch_size`` rows at a time. For
    regression, ``target_scale = (mean, std)`` undoes a standardization of the
    targets so that MAE and RMSE are in the original units (R² does not change).

    Raises :class:`ValueError` for an unknown task or a bad class count.
    """
    kind = task_for(num_classes, task)
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    with torch.no_grad():
        chunks = [
            model(features[i : i + batch_size].to(device))
            for i in range(0, len(features), batch_size)
        ]
        out = torch.cat(chunks) if chunks else torch.zeros(0, 1, device=device)
        y = labels.to(device)
        criterion = loss_fn(num_classes, task=kind, regression_loss=regression_loss)
        loss = float(criterion(out, targets_for_loss(y, num_classes, task=kind)))
    if kind == "regression":
        return _regression(out.squeeze(1).cpu().numpy(), labels, loss, target_scale)
    proba = predict_proba(out, num_classes).cpu().numpy()
    return _classification(proba, labels, loss, num_classes, kind)


def _classification(
    proba: np.ndarray, labels: torch.Tensor, loss: float, num_classes: int, kind: Task
) -> Metrics:
    from sklearn.metrics import roc_auc_score

    y_np = labels.cpu().numpy()
    accuracy = float((proba.argmax(axis=1) == y_np).mean()) if len(y_np) else 0.0
    auc = _NAN
    present = np.unique(y_np)
    if len(present) == num_classes:
        if num_classes == 2:
            auc = float(roc_auc_score(y_np, proba[:, 1]))
        else:
            auc = float(roc_auc_score(y_np, proba, multi_class="ovr"))
    return Metrics(loss=loss, accuracy=accuracy, auc=auc, examples=len(y_np), task=kind)


def _regression(
    predicted: np.ndarray,
    labels: torch.Tensor,
    loss: float,
    target_scale: tuple[float, float],
) -> Metrics:
    shift, scale = target_scale
    truth = labels.cpu().numpy().astype(np.float64) * scale + shift
    guess = predicted.astype(np.float64) * scale + shift
    error = guess - truth
    n = len(truth)
    mae = float(np.abs(error).mean()) if n else _NAN
    rmse = math.sqrt(float((error**2).mean())) if n else _NAN
    spread = float(((truth - truth.mean()) ** 2).sum()) if n else 0.0
    r2 = 1.0 - float((error**2).sum()) / spread if spread > 0 else _NAN
    return Metrics(loss, _NAN, _NAN, n, mae=mae, rmse=rmse, r2=r2, task="regression")
