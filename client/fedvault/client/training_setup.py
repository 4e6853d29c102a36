"""From a run's settings and the federation's preprocessing to a site's local
training settings: the task, the device and the augmentation (images only)."""

from __future__ import annotations

import pandas as pd
import torch

from fedvault.client.training import LocalSettings
from fedvault.common.augment import Augmentation
from fedvault.common.config import TrainingConfig
from fedvault.common.models import infer_task, run_task
from fedvault.common.preprocessing import Preprocessing
from fedvault.common.protocol import Decline


def regression_at_site(settings: TrainingConfig, target: pd.Series) -> bool:
    """Whether the site summarizes its target as a regression one: the run says
    so, or leaves it to the data (``auto``) and the target is numeric with
    fractional or many distinct values (:func:`~fedvault.common.models.infer_task`).
    """
    if settings.task == "auto":
        return infer_task(target) == "regression"
    return settings.task == "regression"


def device_for(choice: str) -> torch.device | None:
    """``auto``: CUDA when this site has it, else the CPU; ``cuda``: CUDA, or None
    when this site has none."""
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    return None if choice == "cuda" else torch.device("cpu")


def augmentation_for(
    settings: TrainingConfig, prep: Preprocessing
) -> Augmentation | None:
    """The run's augmentation for image data; None for tables or when off."""
    if not prep.image_shape:
        return None
    augmentation = Augmentation(
        rotation=settings.augment_rotation,
        crop_padding=settings.augment_crop,
        copies=settings.augment_copies,
    )
    if augmentation.copies == 1 and not augmentation.changes_images:
        return None
    return augmentation


def local_settings(
    settings: TrainingConfig, prep: Preprocessing, proximal_mu: float
) -> LocalSettings | Decline:
    """The site's settings for one round, or a ``data`` decline when the run asks
    for CUDA and this site has none."""
    device = device_for(settings.device)
    if device is None:
        return Decline("data", "the run asks for device cuda; this site has no GPU")
    return LocalSettings(
        num_classes=prep.num_classes,
        task=run_task(prep),
        regression_loss=settings.regression_loss,
        lr=settings.lr,
        momentum=settings.momentum,
        epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        proximal_mu=proximal_mu,
        device=device,
        augmentation=augmentation_for(settings, prep),
    )
