"""Images for a trained image model: a folder read the way the run read its own.

A folder is either a folder per class (``root/<label>/*.png|jpg|dcm``, the form
``fedvault simulate --data`` trains on; the folder names are the labels) or a flat
folder of image files (no labels). Each file goes through
:mod:`fedvault.common.images` exactly as in the run: decoded (DICOM with its
rescale and window; a file whose header flags burned-in annotations is refused, as
the run refused it), converted to the model's channels and resized to its image
size, pixels in [0, 1]. A file that cannot be used is listed with its reason and
left out; a folder with no usable image is refused.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedvault.common.errors import DataError
from fedvault.common.images import (
    IMAGE_SUFFIXES,
    PATH_COLUMN,
    BadFile,
    ImageSet,
    read_folder,
    read_manifest,
)
from fedvault.server.simulate_data import _no_burned_in
from fedvault.server.trained import TrainedModel

_LABEL = "label"
_BYTES_IO = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>")


@dataclass(frozen=True)
class ImageInputs:
    """Pixels float32 (n, c, h, w), the file of each (relative to the folder), the
    class-folder label of each (None for a flat folder), and the files left out."""

    pixels: np.ndarray
    paths: tuple[str, ...]
    labels: tuple[str, ...] | None
    bad: tuple[BadFile, ...]
    source: str

    def notes(self) -> list[str]:
        """One line per file left out, with its reason."""
        return [
            f"{self.source}/{b.path}: {_BYTES_IO.sub('', b.reason)}; left out"
            for b in self.bad
        ]


def check_kind(trained: TrainedModel, data: Path) -> None:
    """Refuse a folder for a table model and a file for an image model.

    Raises:
        DataError: one line saying what the model reads.
    """
    if trained.image and not data.is_dir():
        c, h, w = trained.prep.image_shape
        raise DataError(
            f"{data}: {trained.path} is an image model ({c}x{h}x{w}); give a folder "
            "of images (root/<label>/*.png or a flat folder)"
        )
    if not trained.image and data.is_dir():
        raise DataError(
            f"{data}: is a folder, but {trained.path} reads tables; give a CSV or "
            "Parquet file"
        )


def read_images(trained: TrainedModel, folder: Path, *, labelled: bool) -> ImageInputs:
    """The images of ``folder`` as the run's model reads them.

    Raises:
        DataError: not a folder, no image in it, no usable image, or (``labelled``)
            a flat folder, which has no labels.
    """
    if not folder.is_dir():
        raise DataError(f"{folder}: no such image folder")
    c, h, w = trained.prep.image_shape
    flat = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if flat:
        if labelled:
            raise DataError(
                f"{folder}: holds images without labels; a labelled folder has "
                "one folder per class (root/<label>/*.png)"
            )
        images = _read_flat(folder, flat, (h, w), c)
        labels = None
    else:
        images = read_folder(
            folder, size=(h, w), channels=c, dicom_check=_no_burned_in, label=_LABEL
        )
        labels = tuple(str(v) for v in images.meta[_LABEL])
    if images.shape != (c, h, w):
        raise DataError(
            f"{folder}: images have {images.shape[0]} channel(s); the model reads {c}"
        )
    return ImageInputs(
        pixels=images.images.numpy().astype(np.float32),
        paths=tuple(str(p) for p in images.meta[PATH_COLUMN]),
        labels=labels,
        bad=images.report.bad,
        source=str(folder),
    )


def _read_flat(
    folder: Path, names: list[str], size: tuple[int, int], channels: int
) -> ImageSet:
    with tempfile.TemporaryDirectory(prefix="fedvault-images-") as tmp:
        manifest = Path(tmp) / "manifest.csv"
        paths = [str((folder / n).resolve()) for n in names]
        pd.DataFrame({PATH_COLUMN: paths, _LABEL: "-"}).to_csv(manifest, index=False)
        images = read_manifest(
            manifest,
            label=_LABEL,
            size=size,
            channels=channels,
            dicom_check=_no_burned_in,
        )
    by_path = dict(zip(paths, names, strict=True))
    meta = images.meta.assign(
        **{PATH_COLUMN: [by_path[p] for p in images.meta[PATH_COLUMN]]}
    )
    bad = tuple(
        BadFile(by_path.get(b.path, b.path), b.reason) for b in images.report.bad
    )
    report = dataclasses.replace(images.report, bad=bad)
    return ImageSet(images.images, meta, images.label, report)
