"""Model architectures shared by sites and coordinator (same code on both sides)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedvault.common.config import MODEL_NAMES, ModelName


def output_units(num_classes: int) -> int:
    """One logit for a binary task, one per class otherwise."""
    return 1 if num_classes == 2 else num_classes


def build_model(
    name: ModelName, *, in_features: int, num_classes: int, hidden: int = 128
) -> nn.Module:
    """Build the seed's models: MLP Dense(hidden)-ReLU -> head, or logistic regression.

    Binary tasks get a single logit (use :func:`loss_fn` for the matching loss);
    multi-class tasks get one logit per class (softmax head).
    """
    if in_features < 1:
        raise ValueError(f"in_features must be >= 1, got {in_features}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    out = output_units(num_classes)
    if name == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out)
        )
    if name == "logreg":
        return nn.Sequential(nn.Linear(in_features, out))
    raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")


def loss_fn(num_classes: int) -> nn.Module:
    """Loss matching :func:`build_model`'s head (mean reduction)."""
    return nn.BCEWithLogitsLoss() if num_classes == 2 else nn.CrossEntropyLoss()


def per_sample_loss(
    num_classes: int,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Loss of :func:`loss_fn` per example, shape (n,): the mean of it is the loss."""
    if num_classes == 2:
        bce = nn.BCEWithLogitsLoss(reduction="none")
        return lambda out, y: bce(out, y).sum(dim=1)
    ce = nn.CrossEntropyLoss(reduction="none")
    return lambda out, y: ce(out, y)


def targets_for_loss(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Shape integer labels for the loss of the head."""
    return y.float().unsqueeze(1) if num_classes == 2 else y.long()


def predict_proba(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class probabilities, shape (n, num_classes)."""
    if num_classes == 2:
        p1 = torch.sigmoid(logits.squeeze(1))
        return torch.stack([1 - p1, p1], dim=1)
    return torch.softmax(logits, dim=1)
