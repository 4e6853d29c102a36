"""Images as rows of a table, the form a site's data takes between reading and
training: one ``pixels`` column of float32 bytes (channels x height x width, one
size for the whole table) next to the label column.

An image vault stores exactly these rows (its manifest records the shape); a plain
data file for a simulated site is a Parquet file whose schema metadata records it
(:func:`write_image_table`, :func:`image_shape_of`). Preprocessing turns the bytes
back into a float32 array of shape (n, c, h, w) (:func:`pixels_array`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedvault.common.errors import DataError

PIXELS = "pixels"
_SHAPE_KEY = b"fedvault.image-shape"
ImageShape = tuple[int, int, int]


def is_image_frame(frame: pd.DataFrame) -> bool:
    """Whether ``frame`` holds images (a ``pixels`` column)."""
    return PIXELS in frame.columns


def image_frame(images: Any, label: str) -> pd.DataFrame:
    """Rows of an :class:`~fedvault.common.images.ImageSet`: ``pixels`` (float32
    bytes) and the label column, plus any other column of its ``meta`` except the
    file path (file names often carry patient names)."""
    frame = pd.DataFrame(
        {PIXELS: [t.numpy().astype(np.float32).tobytes() for t in images.images]}
    )
    for column in images.meta.columns:
        if column != "path":
            frame[column] = images.meta[column].to_numpy()
    if label not in frame.columns:
        raise DataError(f"images have no {label!r} column")
    return frame


def pixels_array(
    series: pd.Series, shape: ImageShape
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The images of a ``pixels`` column as float32 (n, *shape).

    Raises :class:`DataError` if a row does not hold one image of ``shape``.
    """
    size = int(np.prod(shape)) * 4
    rows = list(series)
    if any(not isinstance(b, bytes | bytearray) or len(b) != size for b in rows):
        raise DataError(f"a pixels row is not one float32 image of shape {shape}")
    if not rows:
        return np.zeros((0, *shape), dtype=np.float32)
    flat = np.frombuffer(b"".join(rows), dtype=np.float32)
    return flat.reshape(len(rows), *shape).copy()


def write_image_table(frame: pd.DataFrame, shape: ImageShape, path: Path) -> None:
    """Write image rows to Parquet, the shape in the file's schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = dict(table.schema.metadata or {})
    metadata[_SHAPE_KEY] = ",".join(str(v) for v in shape).encode()
    pq.write_table(table.replace_schema_metadata(metadata), path)


def image_shape_of(path: Path) -> ImageShape | None:
    """The image shape a Parquet file of :func:`write_image_table` records, or None
    for any other file."""
    if path.suffix.lower() != ".parquet":
        return None
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    text = metadata.get(_SHAPE_KEY)
    if text is None:
        return None
    c, h, w = (int(v) for v in text.decode().split(","))
    return (c, h, w)
