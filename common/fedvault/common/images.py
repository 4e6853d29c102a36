"""Loading images: a folder per class, a CSV/Parquet manifest, DICOM files, and the
embedded handwritten digits.

Every reader returns an :class:`ImageSet`: float32 pixels in [0, 1] of shape
(n, channels, height, width), resized to one size, with one metadata row per image.
A file that cannot be used (unreadable, no pixel data, the wrong number of channels,
refused by a DICOM check) is listed with its reason in the set's
:class:`ImageReport` and left out; only a source with no usable image at all fails.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional

from fedvault.common.data import DEFAULT_TARGET, load_table
from fedvault.common.errors import DataError, first_line

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

PHOTO_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
IMAGE_SUFFIXES = PHOTO_SUFFIXES | DICOM_SUFFIXES
DEFAULT_SIZE = (64, 64)
PATH_COLUMN = "path"
DicomCheck = Callable[["Dataset"], None]
"""Called with each DICOM header before its pixels are read; a :class:`DataError`
it raises refuses the file (e.g. burned-in annotations)."""

_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str


@dataclass(frozen=True)
class ImageReport:
    """What reading found: files looked at, files used, bad files with reasons,
    original sizes (``"HxW"``) and channel counts of the files used, and groups of
    files with identical decoded pixels (shape and values)."""

    files: int
    read: int
    bad: tuple[BadFile, ...]
    sizes: dict[str, int]
    channels: dict[int, int]
    duplicates: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class ImageSet:
    """``images`` float32 (n, c, h, w) in [0, 1]; ``meta`` one row per image (its
    ``path`` and label column, and any other manifest column such as a site)."""

    images: torch.Tensor
    meta: pd.DataFrame
    label: str
    report: ImageReport

    @property
    def shape(self) -> tuple[int, int, int]:
        _, c, h, w = self.images.shape
        return (int(c), int(h), int(w))


def encode_labels(labels: pd.Series) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Class indices (int64, shape (n,)) and the class names they index (sorted)."""
    text = labels.astype("str")
    classes = tuple(sorted(text.unique()))
    codes = text.map({name: i for i, name in enumerate(classes)}).to_numpy()
    return torch.as_tensor(codes.astype(np.int64)), classes


def digits_dataset() -> ImageSet:
    """Scikit-learn's handwritten digits: 1,797 real 8x8 grey images of 0-9.

    They ship inside scikit-learn, so this works offline. Pixels (0-16) are scaled
    to [0, 1]; the label column is ``target`` (the digit).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    n = len(images)
    meta = pd.DataFrame(
        {PATH_COLUMN: [f"digits/{i}" for i in range(n)], DEFAULT_TARGET: bunch.target}
    )
    report = ImageReport(n, n, (), {"8x8": n}, {1: n}, ())
    return ImageSet(images, meta, DEFAULT_TARGET, report)


def read_folder(
    root: Path,
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    channels: int | None = None,
    window: tuple[float, float] | None = None,
    dicom_check: DicomCheck | None = None,
    label: str = "label",
) -> ImageSet:
    """Images in ``root/<class>/`` (PNG, JPEG or DICOM), labelled by folder name.

    ``channels`` is 1 (grey) or 3 (colour); by default that of the first usable
    file. DICOM pixels are read as :func:`dicom_pixels` does, with ``window``.

    Raises :class:`DataError` if ``root`` is not a folder, has no class folder
    with images, or no file in it could be used.
    """
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    rows = [
        {PATH_COLUMN: path.relative_to(root).as_posix(), label: folder.name}
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not rows:
        raise DataError(
            f"{root}: no images in class folders ({root}/<class>/*.png|jpg|dcm)"
        )
    reader = _Reader(size, channels, window, dicom_check)
    return reader.read(root, pd.DataFrame(rows), label, source=str(root))


def read_manifest(
    path: Path,
    *,
    label: str = "label",
    size: tuple[int, int] = DEFAULT_SIZE,
    channels: int | None = None,
    window: tuple[float, float] | None = None,
    dicom_check: DicomCheck | None = None,
) -> ImageSet:
    """Images listed in a CSV or Parquet manifest: a ``path`` column (relative to
    the manifest's folder, or absolute), the ``label`` column, and any others (a
    site column for ``--partition column:``) kept in ``meta``.

    Raises :class:`DataError` for a manifest that cannot be read, a missing column,
    or no usable image.
    """
    table = load_table(path)
    for column in (PATH_COLUMN, label):
        if column not in table.columns:
            hint = (
                ""
                if column == PATH_COLUMN
                else " (name the label column: --target for simulate, --label "
                "for data import-images)"
            )
            raise DataError(f"{path}: manifest has no {column!r} column{hint}")
    reader = _Reader(size, channels, window, dicom_check)
    no_path = table[PATH_COLUMN].isna() | (
        table[PATH_COLUMN].astype(str).str.strip() == ""
    )
    no_label = table[label].isna()
    for row in (no_path | no_label).to_numpy().nonzero()[0]:
        what = "no path" if no_path.iloc[row] else "no label"
        # row as a spreadsheet numbers it: the header is row 1
        reader.bad.append(
            BadFile(f"{path.name} row {row + 2}", f"{what} in the manifest")
        )
    reader.skipped = int((no_path | no_label).sum())
    table = table[~(no_path | no_label)]
    table = table.assign(**{PATH_COLUMN: table[PATH_COLUMN].astype("str")})
    return reader.read(path.parent, table.reset_index(drop=True), label, str(path))


def dicom_pixels(
    dataset: Dataset, *, window: tuple[float, float] | None = None
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The pixels of a single-frame DICOM image as float32 (channels, rows, columns)
    in [0, 1].

    Grey images: the modality rescale (slope, intercept) is applied, then the window
    (``window`` as (center, width), else the header's first WindowCenter /
    WindowWidth, else the image's own range) maps to [0, 1]; MONOCHROME1 is inverted.
    Colour images are scaled by their bit depth.

    Raises :class:`DataError` for no or empty pixel data, several frames, or pixel
    data that cannot be decoded here.
    """
    from pydicom.pixels.processing import apply_rescale

    if not dataset.get("PixelData"):
        raise DataError("no pixel data")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"{frames} frames; only single-frame images are read")
    try:
        pixels = np.asarray(dataset.pixel_array, dtype=np.float64)
    except Exception as exc:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "")
        name = getattr(syntax, "name", str(syntax)) or "unknown transfer syntax"
        raise DataError(
            f"cannot decode pixel data ({name}): {first_line(exc)}"
        ) from None
    if pixels.size == 0:
        raise DataError("empty pixel data")
    if int(dataset.get("SamplesPerPixel", 1)) > 1:
        bits = int(dataset.get("BitsStored", 8))
        colour: np.ndarray[Any, np.dtype[np.float32]]
        colour = (np.moveaxis(pixels, -1, 0) / (2**bits - 1)).astype(np.float32)
        return colour
    values = np.asarray(apply_rescale(pixels, dataset), dtype=np.float64)
    low, high = _window(dataset, values, window)
    unit = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        unit = 1.0 - unit
    return unit[np.newaxis].astype(np.float32)


class _Reader:
    """Reads files one by one into tensors of one size, keeping a report."""

    def __init__(
        self,
        size: tuple[int, int],
        channels: int | None,
        window: tuple[float, float] | None,
        dicom_check: DicomCheck | None,
    ) -> None:
        if min(size) < 1:
            raise DataError(f"image size must be at least 1x1, got {size}")
        if channels not in (None, 1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        self.size, self.channels = size, channels
        self.window, self.dicom_check = window, dicom_check
        self.bad: list[BadFile] = []
        self.skipped = 0  # manifest rows left out before reading (no path/label)
        self.sizes: Counter[str] = Counter()
        self.counts: Counter[int] = Counter()
        self.hashes: dict[str, list[str]] = {}

    def read(
        self, base: Path, table: pd.DataFrame, label: str, source: str
    ) -> ImageSet:
        kept: list[int] = []
        tensors: list[torch.Tensor] = []
        for row, name in enumerate(table[PATH_COLUMN]):
            pixels = self._one(base, name)
            if pixels is not None:
                kept.append(row)
                tensors.append(pixels)
        if not tensors:
            first = f" (first: {self.bad[0].path}: {self.bad[0].reason})"
            raise DataError(f"{source}: no usable image{first if self.bad else ''}")
        report = ImageReport(
            files=len(table) + self.skipped,
            read=len(tensors),
            bad=tuple(self.bad),
            sizes=dict(self.sizes),
            channels=dict(self.counts),
            duplicates=_duplicates(self.hashes.values()),
        )
        meta = table.iloc[kept].reset_index(drop=True)
        return ImageSet(torch.stack(tensors), meta, label, report)

    def _one(self, base: Path, name: str) -> torch.Tensor | None:
        path = Path(name) if Path(name).is_absolute() else base / name
        try:
            data = path.read_bytes()
            pixels = self._decode(path, data)
        except DataError as exc:
            self.bad.append(BadFile(name, str(exc)))
            return None
        except OSError as exc:
            self.bad.append(BadFile(name, f"unreadable: {exc.strerror or exc}"))
            return None
        channels, height, width = pixels.shape
        if self.channels is None:
            self.channels = channels
        if channels != self.channels:
            reason = f"{channels} channel(s), expected {self.channels}"
            self.bad.append(BadFile(name, reason))
            return None
        self.sizes[f"{height}x{width}"] += 1
        self.counts[channels] += 1
        # Exact duplicates are images with the same decoded pixels: the same scan
        # saved twice with different headers (or encodings) is one image.
        digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes())
        self.hashes.setdefault(digest.hexdigest(), []).append(name)
        return _resize(torch.from_numpy(pixels), self.size)

    def _decode(self, path: Path, data: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
        if path.suffix.lower() in DICOM_SUFFIXES:
            return self._dicom(data)
        if path.suffix.lower() not in PHOTO_SUFFIXES:
            raise DataError(f"unsupported file type {path.suffix!r}")
        return _photo(data)

    def _dicom(self, data: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
        import pydicom
        from pydicom.errors import InvalidDicomError

        try:
            dataset = pydicom.dcmread(io.BytesIO(data))
        except (InvalidDicomError, EOFError, ValueError, KeyError) as exc:
            raise DataError(f"unreadable DICOM: {first_line(exc)}") from None
        if self.dicom_check is not None:
            self.dicom_check(dataset)
        return dicom_pixels(dataset, window=self.window)


def _photo(data: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image: Image.Image = opened
            if image.mode not in _GREY_MODES:
                image = image.convert("RGB")
            elif image.mode in ("1", "LA"):
                image = image.convert("L")
            pixels = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # (Pillow names the in-memory buffer, a new address each run: not kept)
        reason = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", first_line(exc))
        raise DataError(f"unreadable image: {reason}") from None
    if pixels.size == 0:
        raise DataError("empty image")
    unit = _unit(pixels)
    return unit[np.newaxis] if unit.ndim == 2 else np.moveaxis(unit, -1, 0)


def _unit(pixels: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    if pixels.dtype == np.uint8:
        return (pixels / 255.0).astype(np.float32)
    if pixels.dtype == np.uint16:
        return (pixels / 65535.0).astype(np.float32)
    values = pixels.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    return ((values - low) / max(high - low, 1e-12)).astype(np.float32)


def _window(
    dataset: Dataset, values: np.ndarray[Any, Any], window: tuple[float, float] | None
) -> tuple[float, float]:
    if window is None and "WindowCenter" in dataset and "WindowWidth" in dataset:
        center, width = dataset.WindowCenter, dataset.WindowWidth
        first = [_first(v) for v in (center, width)]
        window = (first[0], first[1])
    if window is not None and window[1] > 0:
        return window[0] - window[1] / 2, window[0] + window[1] / 2
    return float(values.min()), float(values.max())


def _resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(pixels.shape[1:]) == size:
        return pixels.float()
    resized = functional.interpolate(
        pixels.float().unsqueeze(0), size=size, mode="bilinear", antialias=True
    )
    return resized.squeeze(0).clamp(0.0, 1.0)


def _duplicates(groups: Iterable[list[str]]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(g) for g in groups if len(g) > 1)


def _first(value: object) -> float:
    """The first of a multi-valued DICOM number (WindowCenter may hold several)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]
