"""Apply a trained model to new records: one output row per input row.

Each row gets the predicted class (a label of the run's target column) and one
probability per class, in the order of the run's labels; a regression run's rows get
the predicted value in the target's units. The records go through the run's own
preprocessing first (:func:`fedvault.server.trained.features`). An image model reads
a folder of images (:mod:`fedvault.server.image_inputs`): one row per usable file,
its path first.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedvault.common.data import load_table
from fedvault.common.errors import DataError
from fedvault.common.files import atomic_write
from fedvault.server.image_inputs import check_kind, read_images
from fedvault.server.trained import TrainedModel, features

PREDICTED = "predicted"
PATH = "path"
LABEL = "label"
PROBABILITY_PREFIX = "probability_"
_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class Predictions:
    """The predictions of one file and what was imputed or unseen in it."""

    table: pd.DataFrame
    notes: tuple[str, ...]


def predict_file(
    trained: TrainedModel, data: Path, *, strict: bool = False
) -> Predictions:
    """Predict every row of a CSV or Parquet file, or every image of a folder.

    Raises:
        DataError: the file cannot be read or does not fit the model's schema, a
            folder for a table model or a file for an image model, a folder with
            no usable image.
    """
    check_kind(trained, data)
    if trained.image:
        return predict_images(trained, data)
    frame = load_table(data)
    return predict_frame(trained, frame, source=str(data), strict=strict)


def predict_frame(
    trained: TrainedModel, frame: pd.DataFrame, *, source: str, strict: bool = False
) -> Predictions:
    """Predict every row of ``frame`` (see :func:`predict_file`)."""
    x, notes = features(trained.prep, frame, source=source, strict=strict)
    return Predictions(table=_table(trained, x), notes=tuple(notes))


def predict_images(trained: TrainedModel, folder: Path) -> Predictions:
    """One row per usable image of ``folder`` (see :mod:`image_inputs`): its path,
    its class folder (``label``) where the folder has one per class, then the
    prediction. Unusable files are left out, each with a note.

    Raises:
        DataError: no such folder, or no usable image in it.
    """
    images = read_images(trained, folder, labelled=False)
    front = pd.DataFrame({PATH: list(images.paths)})
    if images.labels is not None:
        front[LABEL] = list(images.labels)
    table = pd.concat([front, _table(trained, images.pixels)], axis=1)
    return Predictions(table=table, notes=tuple(images.notes()))


def _table(trained: TrainedModel, x: np.ndarray) -> pd.DataFrame:
    if trained.regression:
        return pd.DataFrame({PREDICTED: trained.values(x)})
    proba = trained.probabilities(x)
    labels = list(trained.prep.labels)
    table = pd.DataFrame(
        {PREDICTED: np.asarray(labels, dtype=object)[proba.argmax(axis=1)]}
    )
    for i, label in enumerate(labels):
        table[f"{PROBABILITY_PREFIX}{label}"] = proba[:, i]
    return table


def check_output(out: Path) -> None:
    """Refuse an output path before any work is done.

    Raises:
        DataError: unsupported suffix, or the parent folder does not exist.
    """
    if out.suffix.lower() not in _SUFFIXES:
        raise DataError(f"{out}: write predictions to a .csv or .parquet file")
    if not out.parent.is_dir():
        raise DataError(f"{out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise DataError(f"{out}: is a folder")


def write_table(table: pd.DataFrame, out: Path) -> None:
    """Write ``table`` as CSV or Parquet (by suffix), atomically."""
    buffer = io.BytesIO()
    if out.suffix.lower() == ".csv":
        buffer.write(table.to_csv(index=False).encode())
    else:
        table.to_parquet(buffer, index=False)
    atomic_write(out, buffer.getvalue())
