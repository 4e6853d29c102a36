"""Reading a raw export (CSV or Parquet) in bounded chunks, with clear errors.

CSV cells are read as text and parsed later by the schema's types; each chunk's index
is the 0-based position of its rows in the file, so row numbers stay meaningful.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fedvault.common.errors import DataError, SchemaError

CSV_SUFFIXES = frozenset({".csv", ".txt", ".tsv"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
_OTHER_DELIMITERS = (";", "\t", "|", ",")
_BLOCK_BYTES = 1 << 22


@dataclass(frozen=True, kw_only=True)
class ReadOptions:
    delimiter: str = ","
    encoding: str = "utf-8"
    chunk_rows: int = 100_000

    def __post_init__(self) -> None:
        if len(self.delimiter) != 1:
            raise DataError(f"delimiter: one character, got {self.delimiter!r}")
        if self.chunk_rows < 1:
            raise DataError(f"chunk-rows: must be >= 1, got {self.chunk_rows}")


def read_header(path: Path, options: ReadOptions) -> list[str]:
    """The file's column names, checked: not empty, no duplicates, right delimiter."""
    _check_file(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        try:
            names = list(pq.ParquetFile(path).schema_arrow.names)
        except Exception as exc:  # pyarrow raises many kinds
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    else:
        names = _csv_header(path, options)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SchemaError(f"{path}: column {dupes[0]!r} appears more than once")
    return names


def check_columns(path: Path, names: Sequence[str], expected: Sequence[str]) -> None:
    """The file must have exactly the schema's columns (any order)."""
    missing = [n for n in expected if n not in names]
    if missing:
        raise SchemaError(
            f"{path}: column {missing[0]!r} is missing ({len(missing)} missing in "
            "all); the schema requires it — re-export with it or fix the schema"
        )
    extra = [n for n in names if n not in expected]
    if extra:
        raise SchemaError(
            f"{path}: column {extra[0]!r} is not in the schema ({len(extra)} extra "
            f'in all); add it to the schema (role = "drop" to ignore it)'
        )


def iter_chunks(
    path: Path, options: ReadOptions, missing_values: Sequence[str] = ("",)
) -> Iterator[pd.DataFrame]:
    """Yield the file's rows in chunks of exactly ``options.chunk_rows`` (the last
    may be shorter); CSV cells come as text, ``missing_values`` as missing."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        yield from _parquet_chunks(path, options)
        return
    names = read_header(path, options)
    bad_rows: list[Any] = []

    def on_bad_row(row: Any) -> str:
        bad_rows.append(row)
        return "error"

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(
                block_size=_BLOCK_BYTES,
                encoding=options.encoding,
                column_names=names,
                skip_rows=1,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=options.delimiter,
                newlines_in_values=True,
                invalid_row_handler=on_bad_row,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                null_values=list(missing_values),
                strings_can_be_null=True,
            ),
        )
        yield from _rebatch(reader, options.chunk_rows)
    except pa.ArrowInvalid as exc:
        raise _csv_error(path, options, exc, bad_rows) from None


def _rebatch(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pd.DataFrame]:
    """Regroup record batches into frames of ``rows`` rows, indexed by position."""
    pending: list[pa.RecordBatch] = []
    buffered = offset = 0
    for batch in batches:
        pending.append(batch)
        buffered += batch.num_rows
        while buffered >= rows:
            table = pa.Table.from_batches(pending)
            yield _frame(table.slice(0, rows), offset)
            offset += rows
            rest = table.slice(rows)
            pending, buffered = rest.to_batches(), rest.num_rows
    if buffered:
        yield _frame(pa.Table.from_batches(pending), offset)


def _frame(table: pa.Table, offset: int) -> pd.DataFrame:
    frame: pd.DataFrame = table.to_pandas()
    frame.index = pd.RangeIndex(offset, offset + len(frame))
    return frame


def _csv_error(
    path: Path, options: ReadOptions, exc: Exception, bad_rows: list[Any]
) -> DataError:
    if bad_rows:
        row = bad_rows[0]
        where = f" (line {row.number})" if row.number is not None else ""
        return DataError(
            f"{path}: malformed CSV: a row has {row.actual_columns} fields, the "
            f"header {row.expected_columns}{where}; check the delimiter and quoting"
        )
    text = str(exc)
    if "UTF8" in text or "decode" in text.lower():
        return DataError(
            f"{path}: not valid {options.encoding} text; re-export as UTF-8 or pass "
            "--encoding (e.g. latin-1)"
        )
    return DataError(f"{path}: malformed CSV ({text.split(':')[0]})")


def _parquet_chunks(path: Path, options: ReadOptions) -> Iterator[pd.DataFrame]:
    offset = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=options.chunk_rows):
        frame: pd.DataFrame = batch.to_pandas()
        frame.index = pd.RangeIndex(offset, offset + len(frame))
        offset += len(frame)
        yield frame


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"raw file not found: {path}")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES | PARQUET_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; use .csv or .parquet"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")


def _csv_header(path: Path, options: ReadOptions) -> list[str]:
    try:
        with path.open(encoding=options.encoding, newline="") as handle:
            rows = csv.reader(handle, delimiter=options.delimiter)
            header = next(rows, [])
            first = next(
                (row for row in rows if any(cell.strip() for cell in row)), None
            )
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not valid {options.encoding} text; re-export as UTF-8 or pass "
            "--encoding (e.g. latin-1)"
        ) from exc
    names = [_clean_name(h) for h in header]
    if not any(names):
        raise DataError(f"{path}: no header line (the first line is empty)")
    if len(names) == 1:
        for other in _OTHER_DELIMITERS:
            if other != options.delimiter and other in names[0]:
                shown = "\\t" if other == "\t" else other
                raise DataError(
                    f"{path}: found a single column; the header contains {shown!r} — "
                    f"is the file {shown!r}-separated? pass --delimiter '{shown}'"
                )
    if "" in names:
        raise DataError(f"{path}: column {names.index('') + 1} has no name")
    if first is None:
        raise DataError(f"{path}: a header but no data rows")
    if len(first) > len(names):
        raise DataError(
            f"{path}: malformed CSV (the first data row has {len(first)} fields, the "
            f"header {len(names)}); check the delimiter and quoting"
        )
    return names


def _clean_name(name: object) -> str:
    return str(name).lstrip("\ufeff").strip()
