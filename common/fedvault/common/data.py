"""Loading tabular data: the embedded default dataset and user CSV / Parquet files."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from fedvault.common.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_TARGET = "target"
_CSV_SUFFIXES = {".csv", ".txt"}
_PARQUET_SUFFIXES = {".parquet", ".pq"}


def default_dataset() -> pd.DataFrame:
    """Scikit-learn's breast cancer data (569 patients x 30 features, binary).

    Real clinical data that ships inside scikit-learn, so it works offline. The label
    column is ``target`` (0 = malignant, 1 = benign).
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame: pd.DataFrame = bunch.frame
    return frame.rename(columns={"target": DEFAULT_TARGET})


def load_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file; :class:`DataError` says what is wrong."""
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise DataError(f"data path is not a file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in _PARQUET_SUFFIXES:
            frame = pd.read_parquet(path)
        elif suffix in _CSV_SUFFIXES:
            frame = pd.read_csv(path)
        else:
            raise DataError(
                f"{path}: unsupported file type {suffix!r}; use .csv or .parquet"
            )
    except DataError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the file is empty") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: malformed CSV ({_first_line(exc)})") from exc
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text at byte {exc.start}; re-export as UTF-8 CSV"
        ) from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read ({_first_line(exc)})") from exc
    if frame.empty:
        raise DataError(f"{path}: no rows")
    return frame


def check_target(frame: pd.DataFrame, target: str, *, source: str) -> pd.DataFrame:
    """Check the label column and drop rows whose label is missing.

    Raises :class:`DataError` when the column is absent or has fewer than 2 classes.
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
    classes = frame[target].nunique()
    if classes < 2:
        raise DataError(
            f"{source}: target column {target!r} has {classes} class(es); "
            "at least 2 are needed"
        )
    if frame.shape[1] < 2:
        raise DataError(f"{source}: no feature columns besides {target!r}")
    return frame


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
