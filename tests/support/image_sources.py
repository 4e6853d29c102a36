"""Small image sources for tests: a folder per class, a manifest, a DICOM export."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fedvault.client.data.dicom import write_dicom_demo
from fedvault.common.images import digits_dataset

DICOM_IDENTIFIERS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)


def image_folder(root: Path, *, classes: int = 3, per_class: int = 20) -> Path:
    """Digits as 16x16 PNGs in ``root/<class>/``."""
    digits = digits_dataset()
    labels = digits.meta[digits.label].to_numpy()
    for label in range(classes):
        folder = root / f"digit{label}"
        folder.mkdir(parents=True)
        for i in np.flatnonzero(labels == label)[:per_class]:
            pixels = (digits.images[i, 0].numpy() * 255).astype(np.uint8)
            Image.fromarray(pixels).resize((16, 16)).save(folder / f"{i}.png")
    return root


def image_manifest(root: Path) -> Path:
    """A CSV manifest (``path``, ``label``) of :func:`image_folder`'s images."""
    folder = image_folder(root / "images")
    rows = [
        {"path": p.relative_to(root).as_posix(), "label": p.parent.name}
        for p in sorted(folder.rglob("*.png"))
    ]
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def dicom_folder(root: Path, *, copies: int = 6) -> Path:
    """pydicom's samples as ``fedvault data demo --kind dicom`` writes them (one
    with burned-in annotations), each other file copied ``copies`` times so that
    two sites have enough images."""
    written = write_dicom_demo(root)
    for path in written:
        if path.name != "burned_in.dcm":
            for i in range(copies):
                shutil.copyfile(path, path.with_name(f"{path.stem}_{i}.dcm"))
    return root


def dicom_identifiers(root: Path) -> set[bytes]:
    """The identifying header values of the DICOM files under ``root``."""
    import pydicom

    found = set()
    for path in root.rglob("*.dcm"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        for name in DICOM_IDENTIFIERS:
            value = str(header.get(name, "") or "").strip()
            if len(value) >= 4:
                found.add(value.encode())
    return found
