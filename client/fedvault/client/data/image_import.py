"""Importing images into the encrypted vault: a folder per class, a CSV/Parquet
manifest, or DICOM files, stored like tables (the same AES-256-GCM chunks,
authenticated manifest and atomic commit as :mod:`fedvault.client.data.vault_writer`).

What is stored per image: its pixels (float32, one size for the whole vault, in
[0, 1]), its label, and for DICOM files two keyed pseudonyms that keep images of one
patient and one study together (for splitting by patient) — nothing else from a
DICOM header, and never the file's path (file names often carry patient names).
Every DICOM header is passed through the PS3.15 Annex E profile of
:mod:`fedvault.client.data.dicom` first; a file whose header says it has burned-in
annotations is refused unless allowed. Files that cannot be used are listed in the
quality report, not fatal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedvault.client.data.dicom import DeidOptions, check_burned_in, deidentify
from fedvault.client.data.keys import key_id
from fedvault.client.data.vault import IDENTIFIER_ROLE, iter_batches, read_manifest
from fedvault.client.data.vault_format import Manifest
from fedvault.client.data.vault_writer import VaultWriter, check_replace
from fedvault.common.errors import ConfigError, DataError
from fedvault.common.images import (
    DEFAULT_SIZE,
    DICOM_SUFFIXES,
    PATH_COLUMN,
    ImageReport,
    ImageSet,
    read_folder,
)
from fedvault.common.images import (
    read_manifest as read_image_manifest,
)

KIND = "images"
PIXELS = "pixels"
PATIENT = "patient"
STUDY = "study"
CHUNK_IMAGES = 512


@dataclass(frozen=True, kw_only=True)
class ImageImportOptions:
    """``size``: (height, width) every image is resized to; ``channels``: 1 or 3
    (default: the first usable file's); ``label``: the label column of a manifest;
    ``allow_burned_in``: accept DICOM headers flagging burned-in annotations;
    ``replace``: replace the dataset the vault holds (same key only);
    ``classes``: the label classes the site declares (its schema contract: their
    noisy counts are always released in the site's summary, docs/privacy.md);
    empty: none declared."""

    size: tuple[int, int] = DEFAULT_SIZE
    channels: int | None = None
    label: str = "label"
    classes: tuple[str, ...] = ()
    allow_burned_in: bool = False
    replace: bool = False

    def __post_init__(self) -> None:
        twice = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if twice:
            raise ConfigError(
                f"classes: {', '.join(map(repr, twice))} listed more than once"
            )


def parse_classes(text: str) -> tuple[str, ...]:
    """``--classes A,B,...``: the names, or none. Raises :class:`ConfigError` for
    an empty name (a name listed twice: :class:`ImageImportOptions`)."""
    if not text.strip():
        return ()
    names = tuple(c.strip() for c in text.split(","))
    if "" in names:
        raise ConfigError(f"classes: {text!r} has an empty class name")
    return names


@dataclass(frozen=True)
class ImageImportResult:
    manifest: Manifest
    report: dict[str, Any]
    replaced: Manifest | None = None


def import_images(
    source: Path,
    vault_dir: Path,
    *,
    key: bytes,
    secret: bytes | None,
    options: ImageImportOptions | None = None,
) -> ImageImportResult:
    """Read, de-identify and encrypt the images of ``source`` (a folder per class,
    or a manifest file) into ``vault_dir``.

    Raises :class:`DataError` when no image can be used, DICOM files come without
    a site secret or an image's label is not among the declared ``classes``,
    :class:`ConfigError` for a vault that holds data (without ``replace``) or is
    locked; nothing is written then.
    """
    options = options or ImageImportOptions()
    check_replace(vault_dir, replace=options.replace)
    images = _read(source, options)
    schema: dict[str, Any] = {"kind": KIND, "shape": list(images.shape)}
    if options.classes:
        schema["columns"] = _declared_label(images, options.classes)
    frame = _frame(images, source, secret)
    report = _report(images)
    with VaultWriter(
        vault_dir, key, replacing=key if options.replace else None
    ) as writer:
        for start in range(0, len(frame), CHUNK_IMAGES):
            writer.write_chunk(frame.iloc[start : start + CHUNK_IMAGES])
        manifest = writer.commit(
            target=images.label,
            # the keyed pseudonyms are identifiers: read back only on request
            # (read_frame's include_pseudonyms), never a model input
            columns=[(str(c), _role(str(c), images.label)) for c in frame],
            schema=schema,
            schema_hash="",
            quality=report,
            details={"kind": KIND, "source": source.name, "key-id": key_id(key)},
        )
        return ImageImportResult(manifest, report, writer.replaced)


def _role(column: str, label: str) -> str:
    if column == label:
        return "target"
    return IDENTIFIER_ROLE if column in (PATIENT, STUDY) else "feature"


def read_image_vault(vault_dir: Path, key: bytes) -> ImageSet:
    """The images of an image vault, verified (as every vault read is) before any
    is returned: float32 (n, c, h, w) and the label column in ``meta``.

    Raises :class:`IntegrityError` for a wrong key or a damaged vault,
    :class:`DataError` when the vault holds a table, not images.
    """
    manifest = read_manifest(vault_dir, key)
    if manifest.schema.get("kind") != KIND:
        raise DataError(f"vault {vault_dir} holds a table, not images")
    c, h, w = (int(v) for v in manifest.schema["shape"])
    frame = pd.concat(list(iter_batches(vault_dir, key)), ignore_index=True)
    pixels = np.stack(
        [np.frombuffer(b, dtype=np.float32).reshape(c, h, w) for b in frame[PIXELS]]
    )
    report = ImageReport(
        files=len(frame),
        read=len(frame),
        bad=(),
        sizes={},
        channels={c: len(frame)},
        duplicates=(),
    )
    meta = frame.drop(columns=[PIXELS])
    return ImageSet(torch.from_numpy(pixels.copy()), meta, manifest.target, report)


def _declared_label(images: ImageSet, classes: tuple[str, ...]) -> dict[str, Any]:
    """The schema's label column declaring ``classes``; every image's label must
    be one of them."""
    labels = images.meta[images.label].astype(str)
    if unknown := sorted(set(labels) - set(classes)):
        raise DataError(
            f"label {unknown[0]!r} ({int((labels == unknown[0]).sum())} images) is "
            f"not among the declared classes {', '.join(classes)}"
        )
    spec = {"type": "category", "role": "target", "categories": list(classes)}
    return {images.label: spec}


def _read(source: Path, options: ImageImportOptions) -> ImageSet:
    def check(dataset: Any) -> None:
        check_burned_in(dataset, allowed=options.allow_burned_in)

    if source.is_dir():
        return read_folder(
            source,
            size=options.size,
            channels=options.channels,
            dicom_check=check,
            label=options.label,
        )
    if not source.is_file():
        raise DataError(f"image source not found: {source}")
    return read_image_manifest(
        source,
        label=options.label,
        size=options.size,
        channels=options.channels,
        dicom_check=check,
    )


def _frame(images: ImageSet, source: Path, secret: bytes | None) -> pd.DataFrame:
    """What is stored: pixels, label, and for DICOM the patient/study pseudonyms."""
    meta = images.meta
    frame = pd.DataFrame(
        {
            PIXELS: [t.numpy().astype(np.float32).tobytes() for t in images.images],
            images.label: meta[images.label].astype(str).to_numpy(),
        }
    )
    paths = [Path(p) for p in meta[PATH_COLUMN]]
    if not any(p.suffix.lower() in DICOM_SUFFIXES for p in paths):
        return frame
    if secret is None:
        raise DataError(
            "DICOM files: pass a site secret (--secret FILE; create one with "
            "`fedvault data keygen`): patient and study identifiers are replaced "
            "by keyed pseudonyms"
        )
    base = source if source.is_dir() else source.parent
    pairs = [_pseudonyms(base / p, secret) for p in paths]
    frame[PATIENT] = [patient for patient, _ in pairs]
    frame[STUDY] = [study for _, study in pairs]
    return frame


def _pseudonyms(path: Path, secret: bytes) -> tuple[str, str]:
    """The de-identified header's patient id and study UID ('' for a non-DICOM
    file): only these two keyed pseudonyms are kept."""
    if path.suffix.lower() not in DICOM_SUFFIXES:
        return "", ""
    import pydicom

    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    deidentify(dataset, secret=secret, options=DeidOptions(allow_burned_in=True))
    return str(dataset.get("PatientID", "")), str(dataset.get("StudyInstanceUID", ""))


def _report(images: ImageSet) -> dict[str, Any]:
    """The image quality report stored in the manifest."""
    report = images.report
    labels = images.meta[images.label].astype(str).value_counts()
    return {
        "kind": KIND,
        "files": report.files,
        "stored": report.read,
        "unreadable": [{"file": b.path, "reason": b.reason} for b in report.bad],
        "original-sizes": dict(report.sizes),
        "channels": {str(k): v for k, v in report.channels.items()},
        "class-balance": {str(k): int(v) for k, v in labels.items()},
        "exact-duplicates": [list(group) for group in report.duplicates],
        "stored-shape": list(images.shape),
    }
