"""Reading a raw table (CSV or Parquet) the one way every command reads it.

``fedvault simulate --data``, ``fedvault data schema infer`` and ``fedvault data
import`` all read through :func:`read_layout` and :func:`iter_text_chunks`, so they
agree on a file:

- encoding: UTF-8 by default, with or without a byte-order mark;
- header: names unquoted and stripped; an empty or a repeated name is refused;
- separator: the one given, or when none is given the one of ``, ; TAB |`` that
  splits the header into the most columns (on a tie, the earlier in that list);
- cells: read as text, in chunks of ``chunk_rows`` rows (the last may be shorter),
  each indexed by the 0-based positions of its rows in the file; ``missing_values``
  become missing. Deciding what a column holds is left to the caller
  (:class:`fedvault.common.data.ColumnTally` holds the rule);
- decimal commas: in a file not separated by commas, a column whose decimal numbers
  are written ``97,55`` is read as ``97.55``. A column's style (comma or point) is
  decided by the first chunk that holds a decimal number in it (the majority
  wins) and kept for the rest of the file: a number written with a point in a
  decimal-comma column (``1.234`` may mean 1234) is refused, naming its rows.

Parquet files are typed already: they are read as they are, in the same chunks.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fedvault.common.errors import DataError

CSV_SUFFIXES = frozenset({".csv", ".txt", ".tsv"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
MISSING_VALUES = ("", "NA", "N/A", "NULL", "null", "NaN", "nan")
DEFAULT_CHUNK_ROWS = 100_000
SEPARATORS = (",", ";", "\t", "|")
COMMA_DECIMAL = r"[+-]?\d+,\d+"
POINT_DECIMAL = r"[+-]?(?:\d+\.\d*|\.\d+|\d+(?:\.\d*)?[eE][+-]?\d+)"
_BLOCK_BYTES = 1 << 22
_UTF8 = frozenset({"utf-8", "utf8", "utf-8-sig", "utf_8", "utf_8_sig"})


@dataclass(frozen=True, kw_only=True)
class Layout:
    """What a file is: its checked column names and, for CSV, how to split it."""

    path: Path
    names: tuple[str, ...]
    delimiter: str = ","
    encoding: str = "utf-8"
    parquet: bool = False


def read_layout(
    path: Path,
    *,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    advice: str = "",
) -> Layout:
    """Check ``path`` and read its header; the separator is detected when ``None``.

    ``advice`` ends the message of an undecodable file (e.g. which option to pass).
    Raises :class:`DataError` naming the file and what is wrong (missing, empty,
    unsupported type, undecodable, no header, no data rows, a column without a
    name or with the name of another).
    """
    _check_file(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        try:
            names = [str(n) for n in pq.ParquetFile(path).schema_arrow.names]
        except Exception as exc:  # pyarrow raises many kinds
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        _check_names(path, names)
        return Layout(path=path, names=tuple(names), parquet=True)
    try:
        with path.open(encoding=_python_codec(encoding), newline="") as handle:
            head = handle.read(1 << 16)
    except UnicodeDecodeError as exc:
        raise _decode_error(path, encoding, advice) from exc
    except LookupError as exc:
        raise DataError(f"encoding: unknown encoding {encoding!r}") from exc
    chosen = delimiter or _sniff(head)
    names = _header(path, head, chosen, given=delimiter is not None)
    return Layout(path=path, names=tuple(names), delimiter=chosen, encoding=encoding)


def iter_text_chunks(
    layout: Layout,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    missing_values: Sequence[str] = MISSING_VALUES,
    advice: str = "",
) -> Iterator[pd.DataFrame]:
    """Yield the rows of ``layout.path`` in chunks (see the module docstring).

    Raises :class:`DataError` for malformed CSV (naming the line), undecodable text
    and a number that breaks its column's decimal style (naming column and rows).
    """
    if layout.parquet:
        batches = pq.ParquetFile(layout.path).iter_batches(batch_size=chunk_rows)
        yield from _rebatch(batches, chunk_rows)
        return
    decimals = _Decimals(layout)
    bad_rows: list[Any] = []

    def on_bad_row(row: Any) -> Literal["error"]:
        bad_rows.append(row)
        return "error"

    last: pd.DataFrame | None = None
    try:
        reader = pacsv.open_csv(
            layout.path,
            read_options=pacsv.ReadOptions(
                block_size=_BLOCK_BYTES,
                encoding=_arrow_codec(layout.encoding),
                column_names=list(layout.names),
                skip_rows=1,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=layout.delimiter,
                newlines_in_values=True,
                invalid_row_handler=on_bad_row,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(layout.names, pa.string()),
                null_values=list(missing_values),
                strings_can_be_null=True,
            ),
        )
        for chunk in _rebatch(reader, chunk_rows):
            last = decimals.apply(chunk)
            yield last
    except pa.ArrowInvalid as exc:
        raise _csv_error(layout, exc, bad_rows, advice) from None
    if last is not None:
        _check_closed_quote(layout, last)


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


class _Decimals:
    """Each column's decimal style, decided once and held (module docstring)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.style: dict[str, Literal["comma", "point"]] = {}

    def apply(self, chunk: pd.DataFrame) -> pd.DataFrame:
        if self.layout.delimiter == ",":
            return chunk  # "1,234" in a comma-separated file is no decimal
        for name in self.layout.names:
            text = chunk[name].str.strip()
            comma = text.str.fullmatch(COMMA_DECIMAL)
            point = text.str.fullmatch(POINT_DECIMAL)
            if name not in self.style and (comma.any() or point.any()):
                self.style[name] = "comma" if comma.sum() > point.sum() else "point"
            if self.style.get(name) != "comma":
                continue
            if point.any():
                raise self._mixed(name, chunk[name][point])
            chunk[name] = text.where(~comma, text.str.replace(",", ".", regex=False))
        return chunk

    def _mixed(self, name: str, values: pd.Series) -> DataError:
        rows = values.index.to_numpy()[:3] + 1
        shown = ", ".join(
            f"{v!r} (row {r})" for r, v in zip(rows, values.head(3), strict=True)
        )
        return DataError(
            f"{self.layout.path}: column {name!r} writes decimals with a comma, but "
            f"also {shown}; write all its numbers one way (a point could be a "
            "thousands separator)"
        )


def _sniff(head: str) -> str:
    """The separator that splits the header line into the most columns."""
    counts = [len(next(_rows(head, d), [])) for d in SEPARATORS]
    return SEPARATORS[counts.index(max(counts))]


def _rows(head: str, delimiter: str) -> Iterator[list[str]]:
    return csv.reader(io.StringIO(head, newline=""), delimiter=delimiter)


def _header(path: Path, head: str, delimiter: str, *, given: bool) -> list[str]:
    rows = _rows(head, delimiter)
    header = next(rows, [])
    first = next((row for row in rows if any(cell.strip() for cell in row)), None)
    names = [str(h).strip() for h in header]
    if not any(names):
        raise DataError(f"{path}: no header line (the first line is empty)")
    if len(names) == 1 and given:
        other = _sniff(head)
        if other != delimiter:
            shown = "\\t" if other == "\t" else other
            raise DataError(
                f"{path}: found a single column; the header contains {shown!r} — "
                f"is the file {shown!r}-separated? pass --delimiter '{shown}'"
            )
    _check_names(path, names)
    if first is None:
        raise DataError(f"{path}: a header but no data rows")
    if len(first) > len(names):
        raise DataError(
            f"{path}: malformed CSV (the first data row has {len(first)} fields, the "
            f"header {len(names)}); check the delimiter and quoting"
        )
    return names


def _check_names(path: Path, names: Sequence[str]) -> None:
    if "" in names:
        raise DataError(f"{path}: column {list(names).index('') + 1} has no name")
    places: dict[str, list[int]] = {}
    for number, name in enumerate(names, start=1):
        places.setdefault(name, []).append(number)
    dupes = [
        f"{name!r} (columns {', '.join(map(str, at))})"
        for name, at in places.items()
        if len(at) > 1
    ]
    if dupes:
        raise DataError(
            f"{path}: duplicated column names: {'; '.join(dupes)}; give each column "
            "its own name"
        )


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES | PARQUET_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; use .csv or .parquet"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")


def _check_closed_quote(layout: Layout, last: pd.DataFrame) -> None:
    """Arrow ends a quote left open at the end of the file silently: refuse it."""
    value = last.iloc[-1, -1]
    if not isinstance(value, str):
        return
    with layout.path.open("rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(0, size - 4 * len(value) - 8))
        tail = handle.read().rstrip(b"\r\n")
    try:
        opened = b'"' + value.rstrip("\r\n").encode(_arrow_codec(layout.encoding))
    except UnicodeEncodeError:
        return
    if tail.endswith(opened) and not tail.endswith(b'"'):
        raise DataError(
            f"{layout.path}: malformed CSV: a quote opened in the last row is never "
            "closed; check the quoting"
        )


def _csv_error(
    layout: Layout, exc: Exception, bad_rows: list[Any], advice: str
) -> DataError:
    path = layout.path
    if bad_rows:
        row = bad_rows[0]
        where = f" (line {row.number})" if row.number is not None else ""
        return DataError(
            f"{path}: malformed CSV: a row has {row.actual_columns} fields, the "
            f"header {row.expected_columns}{where}; check the delimiter and quoting"
        )
    text = str(exc)
    if "UTF8" in text or "decode" in text.lower():
        return _decode_error(path, layout.encoding, advice)
    return DataError(f"{path}: malformed CSV ({text.split(':')[0]})")


def _decode_error(path: Path, encoding: str, advice: str) -> DataError:
    shown = "utf-8" if encoding.lower() in _UTF8 else encoding
    return DataError(f"{path}: not valid {shown} text; re-export as UTF-8{advice}")


def _python_codec(encoding: str) -> str:
    """UTF-8 is read with or without a byte-order mark."""
    return "utf-8-sig" if encoding.lower() in _UTF8 else encoding


def _arrow_codec(encoding: str) -> str:
    """Arrow skips a UTF-8 byte-order mark itself (and the header is skipped)."""
    return "utf8" if encoding.lower() in _UTF8 else encoding
