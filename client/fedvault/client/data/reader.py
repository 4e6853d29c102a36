"""Reading a raw export (CSV or Parquet) in bounded chunks, with clear errors.

The file is read by :mod:`fedvault.common.tables`, as ``fedvault simulate --data``
reads it: UTF-8 with or without a byte-order mark, the separator detected unless
given, decimal commas read as decimal points. CSV cells come as text and are parsed
later by the schema's types; each chunk's index is the 0-based position of its rows
in the file, so row numbers stay meaningful.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedvault.common.errors import DataError, SchemaError
from fedvault.common.tables import DEFAULT_CHUNK_ROWS, iter_text_chunks, read_layout

_ADVICE = " or pass --encoding (e.g. latin-1)"


@dataclass(frozen=True, kw_only=True)
class ReadOptions:
    """How to read a raw CSV export; ``delimiter=None`` detects the separator."""

    delimiter: str | None = None
    encoding: str = "utf-8"
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    def __post_init__(self) -> None:
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise DataError(f"delimiter: one character, got {self.delimiter!r}")
        if self.chunk_rows < 1:
            raise DataError(f"chunk-rows: must be >= 1, got {self.chunk_rows}")


def read_header(path: Path, options: ReadOptions) -> list[str]:
    """The file's column names, checked: not empty, none repeated, a data row.

    Raises :class:`DataError` naming the file and the problem.
    """
    layout = read_layout(
        path, delimiter=options.delimiter, encoding=options.encoding, advice=_ADVICE
    )
    return list(layout.names)


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
    may be shorter); CSV cells come as text, ``missing_values`` as missing.

    Raises :class:`DataError` for malformed or undecodable text and for a number
    that breaks its column's decimal style (:mod:`fedvault.common.tables`).
    """
    layout = read_layout(
        path, delimiter=options.delimiter, encoding=options.encoding, advice=_ADVICE
    )
    yield from iter_text_chunks(
        layout,
        chunk_rows=options.chunk_rows,
        missing_values=missing_values,
        advice=_ADVICE,
    )
