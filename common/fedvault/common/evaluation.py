"""Metrics of a model on labelled data (same code at the sites and the coordinator)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedvault.common.models import loss_fn, predict_proba, targets_for_loss


@dataclass(frozen=True)
class Metrics:
    loss: float
    accuracy: float
    auc: float
    examples: int


def evaluate(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    device: torch.device | None = None,
) -> Metrics:
    """Loss, accuracy and ROC AUC (one-vs-rest for multi-class; NaN if one class)."""
    from sklearn.metrics import roc_auc_score

    device = device or torch.device("cpu")
    model = model.to(device).eval()
    with torch.no_grad():
        logits = model(features.to(device))
        y = labels.to(device)
        loss = float(loss_fn(num_classes)(logits, targets_for_loss(y, num_classes)))
        proba = predict_proba(logits, num_classes).cpu().numpy()
    y_np = labels.cpu().numpy()
    accuracy = float((proba.argmax(axis=1) == y_np).mean()) if len(y_np) else 0.0
    auc = float("nan")
    present = np.unique(y_np)
    if len(present) == num_classes:
        if num_classes == 2:
            auc = float(roc_auc_score(y_np, proba[:, 1]))
        else:
            auc = float(roc_auc_score(y_np, proba, multi_class="ovr"))
    return Metrics(loss=loss, accuracy=accuracy, auc=auc, examples=len(y_np))
