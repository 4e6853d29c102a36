"""Anonymization: keyed pseudonyms, generalization and k-anonymity.

- ``identifier`` columns are dropped, or with ``pseudonymize = true`` replaced by
  ``HMAC-SHA256(site secret, "fedvault pseudonym v1" 0x00 value)`` (first 128 bits,
  hex): the same value gives the same pseudonym in every import with the same secret,
  and without the secret a pseudonym cannot be linked back to its value. The value
  is the raw text of the cell (stripped), whatever the column's type: ``000042``
  and ``42`` are two people.
- ``quasi-identifier`` columns are generalized by their rule (``band``, ``prefix``,
  ``year``, ``month``, ``shift``); ``shift`` moves every shifted date of one person by
  the same keyed offset in ``[-max-days, +max-days]`` (the person is the first
  identifier column; a row without one is keyed on its position in the file), so
  intervals within a record survive.
- k-anonymity: rows whose combination of (generalized) quasi-identifiers occurs fewer
  than k times in the whole dataset are suppressed (removed) and counted. A missing
  value is a value of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedvault.client.data.schema import Column, ColumnType, Method, Role, Schema
from fedvault.common.errors import ConfigError

_PSEUDONYM = b"fedvault pseudonym v1\x00"
_SHIFT = b"fedvault date shift v1\x00"
_SHIFT_ROW = b"fedvault date shift v1 row\x00"
Keys = npt.NDArray[np.uint64]


def needs_secret(schema: Schema) -> bool:
    """Whether anonymizing under ``schema`` needs the site secret."""
    return any(
        c.pseudonymize or (c.generalize and c.generalize.method is Method.SHIFT)
        for c in schema.columns
    )


def pseudonym(value: str, secret: bytes) -> str:
    """The keyed pseudonym of one identifier value (32 hex characters)."""
    mac = hmac.new(secret, _PSEUDONYM + value.encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()[:32]


def pseudonymize(series: pd.Series, secret: bytes) -> pd.Series:
    base = hmac.new(secret, _PSEUDONYM, hashlib.sha256)  # key set up once

    def one(value: object) -> str:
        mac = base.copy()
        mac.update(str(value).encode("utf-8"))
        return mac.hexdigest()[:32]

    values = [one(v) if isinstance(v, str) else None for v in series.tolist()]
    return pd.Series(values, index=series.index, dtype="str")


def anonymize(
    typed: pd.DataFrame, schema: Schema, secret: bytes | None
) -> pd.DataFrame:
    """The stored columns of valid rows: pseudonyms, generalized quasi-identifiers,
    features, sensitive columns and the target, in schema order, in storage dtypes."""
    return _transform(typed, schema, secret, schema.stored)


def quasi_frame(
    typed: pd.DataFrame, schema: Schema, secret: bytes | None
) -> pd.DataFrame:
    """Only the stored quasi-identifier columns, as :func:`anonymize` makes them."""
    return _transform(typed, schema, secret, quasi_columns(schema))


def quasi_columns(schema: Schema) -> tuple[Column, ...]:
    return tuple(c for c in schema.stored if c.role is Role.QUASI_IDENTIFIER)


def _transform(
    typed: pd.DataFrame,
    schema: Schema,
    secret: bytes | None,
    columns: tuple[Column, ...],
) -> pd.DataFrame:
    if needs_secret(schema) and secret is None:
        raise ConfigError(
            "this schema pseudonymizes or shifts dates: a secret is needed"
        )
    offsets = _offsets(typed, schema, secret)
    out: dict[str, pd.Series] = {}
    for column in columns:
        series = typed[column.name]
        if column.role is Role.IDENTIFIER:
            out[column.name] = pseudonymize(_as_text(series, column), secret or b"")
        elif column.generalize is not None:
            out[column.name] = generalize(series, column, offsets=offsets)
        else:
            out[column.name] = _storage(series, column)
    return pd.DataFrame(out, index=typed.index)


def generalize(
    series: pd.Series, column: Column, *, offsets: np.ndarray[Any, Any] | None = None
) -> pd.Series:
    """Apply the column's generalization rule (values already parsed by type)."""
    rule = column.generalize
    if rule is None:
        return series
    if rule.method is Method.BAND:
        width = float(rule.width or 1)
        low = np.floor(series.to_numpy(dtype=float) / width) * width
        labels = {v: _band(v, width, column) for v in np.unique(low[~np.isnan(low)])}
        return pd.Series(low, index=series.index).map(labels).astype("str")
    if rule.method is Method.PREFIX:
        return _as_text(series, column).str.slice(0, rule.length)
    if rule.method in (Method.YEAR, Method.MONTH):
        form = "%Y" if rule.method is Method.YEAR else "%Y-%m"
        text: pd.Series = series.dt.strftime(form).astype("str")
        return text
    if offsets is None:
        raise ConfigError(f"columns.{column.name}: shifting needs per-person offsets")
    return series + pd.to_timedelta(offsets, unit="D")


def class_keys(frame: pd.DataFrame, quasi: list[str]) -> Keys:
    """One 64-bit key per row for its combination of quasi-identifier values."""
    if not quasi:
        return np.zeros(len(frame), dtype=np.uint64)
    hashed = pd.util.hash_pandas_object(frame[quasi], index=False)
    return np.asarray(hashed, dtype=np.uint64)


class ClassCounter:
    """Rows per quasi-identifier class, over all chunks (memory: one int per class)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def add(self, keys: Keys) -> None:
        found, counts = np.unique(keys, return_counts=True)
        for key, count in zip(found.tolist(), counts.tolist(), strict=True):
            self.counts[key] = self.counts.get(key, 0) + count

    def small(self, k: int) -> Keys:
        """Keys of the classes with fewer than k rows."""
        return np.array([key for key, n in self.counts.items() if n < k], np.uint64)


def suppression_mask(keys: Keys, small: Keys) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """True for rows to keep."""
    return ~np.isin(keys, small)


def _offsets(
    typed: pd.DataFrame, schema: Schema, secret: bytes | None
) -> np.ndarray[Any, Any] | None:
    shifts = [
        c.generalize.max_days
        for c in schema.columns
        if c.generalize is not None and c.generalize.method is Method.SHIFT
    ]
    if not shifts or secret is None:
        return None
    max_days = int(shifts[0] or 0)
    person_column = schema.with_role(Role.IDENTIFIER)[0]
    person = _as_text(typed[person_column.name], person_column)
    span = 2 * max_days + 1
    days = []
    for row, value in zip(typed.index, person, strict=True):
        if isinstance(value, str):
            message = _SHIFT + value.encode("utf-8")
        else:  # no person to key on: key on the row's position in the file
            message = _SHIFT_ROW + str(row).encode()
        mac = hmac.new(secret, message, hashlib.sha256).digest()
        days.append(int.from_bytes(mac[:8], "big") % span - max_days)
    return np.asarray(days, dtype=np.int64)


def _band(low: float, width: float, column: Column) -> str:
    if column.type is ColumnType.INT and width.is_integer():
        return f"{int(low)}-{int(low + width - 1)}"
    high = low + width
    return f"[{_num(low)}, {_num(high)})"


def _num(value: float) -> str:
    return (
        str(int(value)) if math.isfinite(value) and value.is_integer() else f"{value:g}"
    )


def _as_text(series: pd.Series, column: Column) -> pd.Series:
    """The values as text: text as it is (an identifier's raw text: ``000042``
    stays ``000042``), parsed values (e.g. from Parquet) in their canonical form."""
    if not (
        pd.api.types.is_numeric_dtype(series)
        or pd.api.types.is_datetime64_any_dtype(series)
    ):
        return series.astype("str").where(series.notna())
    if column.type is ColumnType.DATE:
        text: pd.Series = series.dt.strftime(column.date_format).astype("str")
        return text
    if column.type is ColumnType.INT:
        return series.map(lambda v: str(int(v)), na_action="ignore").astype("str")
    return series.astype("str").where(series.notna())


def _storage(series: pd.Series, column: Column) -> pd.Series:
    if column.type is ColumnType.INT:
        return series.astype("int64") if column.required else series.astype("float64")
    if column.type is ColumnType.FLOAT:
        return series.astype("float64")
    if column.type is ColumnType.DATE:
        return series
    return series.astype("str").where(series.notna())
