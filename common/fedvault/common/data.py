"""Loading tabular data: the embedded default dataset and user CSV / Parquet files.

A CSV file is read as text (:mod:`fedvault.common.tables`) and each column is then
typed by one rule, :class:`ColumnTally`, the same rule ``fedvault data schema infer``
drafts a schema contract with, so a file reads the same at any size.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pandas as pd

from fedvault.common.errors import DataError
from fedvault.common.tables import MISSING_VALUES, iter_text_chunks, read_layout

logger = logging.getLogger(__name__)

DEFAULT_TARGET = "target"
NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
#: A label with more classes than this, most of them one row each, is refused.
MAX_LABEL_CLASSES = 20
#: Numbers take more distinct values than this in a measurement (else: codes).
MEASUREMENT_VALUES = 20
_STRAY_VALUES = 5  # distinct non-numbers a measurement column may hold ...
_STRAY_SHARE = 0.05  # ... or share of its cells
_INTEGER = r"[+-]?\d+"
_PADDED = r"[+-]?0\d+"


class ColumnKind(StrEnum):
    """What a column of text holds, by :class:`ColumnTally`'s rule."""

    EMPTY = "empty"  # no value at all
    NUMBER = "number"  # numbers (a measurement may hold a few strays, see below)
    CODE = "code"  # integers written with leading zeros (000042, 007): text
    TEXT = "text"


@dataclass
class ColumnTally:
    """The one rule that decides what a column of CSV text holds, fed in chunks.

    Over the column's present values (stripped, missing values left out):

    - ``EMPTY`` when there are none;
    - ``CODE`` when any is an integer written with a leading zero (``007``): codes
      and identifiers keep their text;
    - ``NUMBER`` when all are numbers, or when more than half are numbers taking
      more than :data:`MEASUREMENT_VALUES` distinct values and the rest (the
      *strays*, e.g. ``<0.30`` or ``n.d.``) are at most 5 distinct values or at
      most 5% of the cells: a measurement with a few cells that are no numbers,
      which callers must refuse or report (:meth:`describe_strays`);
    - ``TEXT`` otherwise (:attr:`mostly_numbers` says whether numbers were the
      majority, worth a warning).
    """

    present: int = 0
    numbers: int = 0
    integers: int = 0  # written as digits only
    integral: int = 0  # of integer value (``42`` or ``42.0``)
    padded: int = 0
    stray_cells: int = 0
    strays: dict[str, int] = field(default_factory=dict)  # value -> first row (1-)
    many_strays: bool = False
    distinct_numbers: set[str] = field(default_factory=set)

    def add(self, text: pd.Series) -> None:
        """Count ``text``: present, stripped values indexed by 0-based row position."""
        is_number = text.str.fullmatch(NUMBER).to_numpy(dtype=bool)
        numbers = pd.to_numeric(text[is_number]).astype("float64")
        self.present += len(text)
        self.numbers += int(is_number.sum())
        self.integers += int(text.str.fullmatch(_INTEGER).sum())
        self.integral += int((numbers % 1 == 0).sum())
        self.padded += int(text.str.fullmatch(_PADDED).sum())
        if len(self.distinct_numbers) <= MEASUREMENT_VALUES:
            self.distinct_numbers.update(numbers.unique()[:50].astype(str).tolist())
        others = text[~is_number]
        self.stray_cells += len(others)
        firsts = others.drop_duplicates().head(_STRAY_VALUES + 1)
        for row, value in zip(firsts.index.to_numpy(), firsts, strict=True):
            if value in self.strays:
                continue
            if len(self.strays) == _STRAY_VALUES:
                self.many_strays = True
                break
            self.strays[str(value)] = int(row) + 1

    @property
    def kind(self) -> ColumnKind:
        if not self.present:
            return ColumnKind.EMPTY
        if self.padded and self.integers == self.present:
            return ColumnKind.CODE
        if self.numbers == self.present:
            return ColumnKind.NUMBER
        few = not self.many_strays or self.stray_cells <= _STRAY_SHARE * self.present
        measured = len(self.distinct_numbers) > MEASUREMENT_VALUES
        if self.mostly_numbers and measured and few:
            return ColumnKind.NUMBER
        return ColumnKind.TEXT

    @property
    def mostly_numbers(self) -> bool:
        return 2 * self.numbers > self.present

    @property
    def whole(self) -> bool:
        """Whether every number is of integer value."""
        return self.integral == self.numbers

    def describe_strays(self) -> str:
        """E.g. ``'<0.30' (row 4), 'n.d.' (row 9) in 12 cell(s)``: first rows."""
        shown = ", ".join(f"{v!r} (row {r})" for v, r in self.strays.items())
        more = " and other values" if self.many_strays else ""
        return f"{shown}{more} in {self.stray_cells} cell(s)"


def default_dataset() -> pd.DataFrame:
    """Scikit-learn's breast cancer data (569 patients x 30 features, binary).

    Real clinical data that ships inside scikit-learn, so it works offline. The label
    column is ``target`` (0 = malignant, 1 = benign).
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame: pd.DataFrame = bunch.frame
    return frame.rename(columns={"target": DEFAULT_TARGET})


def load_table(
    path: Path,
    *,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    text_columns: Collection[str] = (),
) -> pd.DataFrame:
    """Read a CSV or Parquet file (see :mod:`fedvault.common.tables`).

    CSV columns are typed by :class:`ColumnTally`: numbers become int64 (float64
    when some are missing or not whole), codes and text stay text, an empty column
    is float64 missing; a column read as text although most values are numbers is
    logged as a warning naming the other values. Raises :class:`DataError` naming
    the file (and column, rows) for an unreadable file, and for a measurement
    column with cells that are not numbers (``<0.30``). ``text_columns`` of a CSV
    keep their raw text (stripped; missing values missing): a site code ``007``
    stays ``007`` whatever else its column holds.
    """
    layout = read_layout(path, delimiter=delimiter, encoding=encoding)
    chunks = list(iter_text_chunks(layout, missing_values=MISSING_VALUES))
    text = pd.concat(chunks) if chunks else pd.DataFrame(columns=list(layout.names))
    if text.empty:
        raise DataError(f"{path}: no rows")
    if layout.parquet:
        return text.reset_index(drop=True)
    typed = {
        name: _raw(text[name])
        if name in text_columns
        else _typed(text[name], name, path)
        for name in layout.names
    }
    return pd.DataFrame(typed).reset_index(drop=True)


def _raw(series: pd.Series) -> pd.Series:
    text = series.str.strip()
    return text.where(text.notna() & ~text.isin(MISSING_VALUES))


def _typed(series: pd.Series, name: str, path: Path) -> pd.Series:
    text = series.str.strip()
    present = (text.notna() & ~text.isin(MISSING_VALUES)).to_numpy(dtype=bool)
    tally = ColumnTally()
    tally.add(text[present])
    kind = tally.kind
    if kind is ColumnKind.EMPTY:
        return pd.Series(float("nan"), index=series.index, dtype="float64")
    if kind is ColumnKind.NUMBER:
        if tally.stray_cells:
            raise DataError(
                f"{path}: column {name!r} holds numbers but also "
                f"{tally.describe_strays()}; write those cells as numbers or leave "
                "them empty"
            )
        return _numbers(text.where(present))
    if tally.mostly_numbers:
        logger.warning(
            "%s: column %r is read as text (categories): besides numbers it holds %s",
            path,
            name,
            tally.describe_strays(),
        )
    return text.where(present)


def _numbers(text: pd.Series) -> pd.Series:
    """int64 when every value is a present integer, else float64 (as pandas reads)."""
    numbers = pd.to_numeric(text)
    whole = pd.api.types.is_integer_dtype(numbers) and not numbers.isna().any()
    return numbers.astype("int64" if whole else "float64")


def check_target(frame: pd.DataFrame, target: str, *, source: str) -> pd.DataFrame:
    """Check the label column and drop rows whose label is missing.

    Raises :class:`DataError` when the column is absent, writes a class in two
    ways that differ only in case or spaces (``Yes``, ``yes``), has fewer than 2
    classes, or is no label by :func:`check_label_classes`.
    """
    if target not in frame.columns:
        columns = ", ".join(map(str, frame.columns[:12]))
        raise DataError(
            f"{source}: target column {target!r} not found (columns: {columns})"
        )
    missing = int(frame[target].isna().sum())
    if missing:
        logger.warning("%s: dropping %d rows without a label", source, missing)
        frame = frame[frame[target].notna()].reset_index(drop=True)
    _check_spelling(frame[target], target=target, source=source)
    counts = frame[target].value_counts()
    if len(counts) < 2:
        raise DataError(
            f"{source}: target column {target!r} has {len(counts)} class(es); "
            "at least 2 are needed"
        )
    check_label_classes(counts.tolist(), target=target, source=source)
    if frame.shape[1] < 2:
        raise DataError(f"{source}: no feature columns besides {target!r}")
    return frame


def _check_spelling(labels: pd.Series, *, target: str, source: str) -> None:
    """Refuse classes written two ways (``Yes`` and ``yes``): as two classes they
    would split one, and which spelling is right is the data owner's call."""
    if pd.api.types.is_numeric_dtype(labels):
        return
    values = pd.Series(labels.dropna().unique()).astype(str)
    keys = values.str.strip().str.casefold()
    twice = keys[keys.duplicated(keep=False)]
    if twice.empty:
        return
    spellings = ", ".join(repr(v) for v in values[keys == twice.iloc[0]])
    raise DataError(
        f"{source}: target column {target!r} writes one class in several ways "
        f"({spellings}; they differ only in case or spaces); write each class one "
        "way"
    )


def check_label_classes(counts: Iterable[int], *, target: str, source: str) -> None:
    """Refuse a label whose classes are mostly single rows.

    ``counts`` holds the rows of each class. More than :data:`MAX_LABEL_CLASSES`
    classes of which more than half have one row is an identifier or free text
    (names, notes), not a label: a model would learn nothing from it and its
    "classes" would show personal data in every report. Raises :class:`DataError`.
    """
    sizes = list(counts)
    single = sum(1 for n in sizes if n == 1)
    if len(sizes) > MAX_LABEL_CLASSES and 2 * single > len(sizes):
        raise DataError(
            f"{source}: target column {target!r} is no label: {single} of its "
            f"{len(sizes)} classes have a single row (an identifier or free text?); "
            "choose a column with a few classes, each with many rows"
        )
