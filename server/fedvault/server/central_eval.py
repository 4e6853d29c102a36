"""The coordinator's own measurements of the global model: on its held-out test
file (a table; for an image run also a folder per class or a manifest of image
files), and the names of what the sites' evaluate replies carry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedvault.common.config import RegressionLoss
from fedvault.common.data import load_table
from fedvault.common.evaluation import evaluate
from fedvault.common.image_table import image_shape_of
from fedvault.common.preprocessing import Preprocessing
from fedvault.common.protocol import ACCURACY, REGRESSION_METRICS

HeldOut = tuple[torch.Tensor, torch.Tensor]


def site_metrics(prep: Preprocessing) -> tuple[str, ...]:
    """The metrics the sites' evaluate replies carry for this preprocessing (no
    loss: the row's ``val_loss`` is NaN)."""
    return REGRESSION_METRICS if prep.regression else (ACCURACY,)


def held_out_set(path: Path | None, prep: Preprocessing) -> HeldOut | None:
    """The test file's inputs and targets through the run's preprocessing.

    Raises :class:`DataError` for a file that cannot be read, lacks a column, holds
    no usable image or a label outside the run's classes.
    """
    if path is None:
        return None
    if prep.image_shape and image_shape_of(path) is None:
        return _image_files(path, prep, prep.image_shape)
    frame = load_table(path)
    return (
        torch.from_numpy(prep.transform(frame)),
        # np.array copies: the labels may come back read-only (pandas CoW)
        torch.from_numpy(np.array(prep.encode_labels(frame[prep.target]))),
    )


def held_out_metrics(
    model: torch.nn.Module,
    test: HeldOut,
    prep: Preprocessing,
    regression_loss: RegressionLoss = "mse",
) -> dict[str, Any]:
    """Classification: loss, accuracy, AUC; regression: loss (the run's
    ``regression_loss``), MAE, RMSE, R2 (in the target's units)."""
    from fedvault.common.models import run_task

    m = evaluate(
        model,
        *test,
        num_classes=prep.num_classes,
        task=run_task(prep),
        regression_loss=regression_loss,
        target_scale=(prep.target_mean, prep.target_std),
    )
    return m.values()


def _image_files(path: Path, prep: Preprocessing, shape: tuple[int, ...]) -> HeldOut:
    """A folder per class (``path/<label>/*``) or a manifest (``path`` and label
    columns) of image files, resized to the run's image ``shape``."""
    from fedvault.common.images import read_folder, read_manifest

    c, h, w = shape
    if path.is_dir():
        images = read_folder(path, size=(h, w), channels=c, label=prep.target)
    else:
        images = read_manifest(path, label=prep.target, size=(h, w), channels=c)
    labels = prep.encode_labels(images.meta[images.label])
    return images.images, torch.from_numpy(labels)
