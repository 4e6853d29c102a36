"""Checking raw rows against the schema contract, one chunk at a time.

Each cell is parsed by its column's type and checked against its domain; each row
against the cross-field rules. A problem is named by (column, rule) where rule is one
of :data:`RULES`; for cross-field rules the "column" is the rule's text. Row numbers
count data rows from 1 (the CSV header is not a row).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fedvault.client.data.schema import NUMERIC_TYPES, Column, ColumnType, Role, Schema

RULES = ("missing", "type", "range", "category", "pattern", "rule")
_EXAMPLES = 5
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
Mask = np.ndarray[Any, np.dtype[np.bool_]]


@dataclass(frozen=True)
class CheckedChunk:
    """A chunk parsed and checked: typed values (invalid cells missing) and findings.

    ``typed`` keeps the raw chunk's index (0-based positions of the rows in the file);
    identifier columns hold their raw (stripped) text, not a parsed value.
    """

    typed: pd.DataFrame
    row_numbers: np.ndarray[Any, np.dtype[np.int64]]
    row_ok: Mask
    present: dict[str, int]
    valid: dict[str, int]
    problems: dict[tuple[str, str], Mask]
    rule_violations: int


@dataclass
class ValidationReport:
    """Accumulates problems over all chunks: counts and first examples per rule."""

    rows: int = 0
    invalid_rows: int = 0
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    examples: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def add(self, chunk: CheckedChunk) -> None:
        self.rows += len(chunk.row_ok)
        self.invalid_rows += int((~chunk.row_ok).sum())
        for where, mask in chunk.problems.items():
            hits = int(mask.sum())
            if not hits:
                continue
            self.counts[where] = self.counts.get(where, 0) + hits
            seen = self.examples.setdefault(where, [])
            if len(seen) < _EXAMPLES:
                seen.extend(chunk.row_numbers[mask][: _EXAMPLES - len(seen)].tolist())

    def summary(self, limit: int = 4) -> str:
        """One line: the most frequent problems, with their first row numbers."""
        parts = []
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        for (column, rule), count in ranked[:limit]:
            rows = ", ".join(str(r) for r in self.examples[(column, rule)][:3])
            parts.append(f"{column}: {count} {rule} (rows {rows})")
        more = len(ranked) - limit
        tail = f"; and {more} more" if more > 0 else ""
        return (
            f"{self.invalid_rows} of {self.rows} rows invalid: "
            + "; ".join(parts)
            + tail
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "invalid-rows": self.invalid_rows,
            "problems": [
                {
                    "column": c,
                    "rule": r,
                    "count": n,
                    "first-rows": self.examples[(c, r)],
                }
                for (c, r), n in sorted(self.counts.items())
            ],
        }


def check_chunk(raw: pd.DataFrame, schema: Schema) -> CheckedChunk:
    """Parse and check one chunk of raw rows (index = 0-based data-row position).

    Identifier columns are checked by their type but kept as the file writes them
    (text, stripped), so they are pseudonymized from their raw text.
    """
    typed: dict[str, pd.Series] = {}
    present: dict[str, int] = {}
    valid: dict[str, int] = {}
    problems: dict[tuple[str, str], Mask] = {}
    for column in schema.columns:
        values, findings, missing = _check_column(raw[column.name], column, schema)
        bad = np.zeros(len(raw), dtype=bool)
        for kind, mask in findings.items():
            problems[(column.name, kind)] = mask
            if kind != "missing":
                bad |= mask
        typed[column.name] = values.where(~bad)
        present[column.name] = int((~missing).sum())
        valid[column.name] = present[column.name] - int(bad.sum())
    frame = pd.DataFrame(typed, index=raw.index)
    violations = np.zeros(len(raw), dtype=bool)
    for rule in schema.rules:
        left, right = frame[rule.left], frame[rule.right]
        both = (left.notna() & right.notna()).to_numpy()
        holds = np.zeros(len(raw), dtype=bool)
        holds[both] = _OPS[rule.op](left[both], right[both]).to_numpy(dtype=bool)
        broken = both & ~holds
        problems[(rule.text, "rule")] = broken
        violations |= broken
    row_ok = np.ones(len(raw), dtype=bool)
    for mask in problems.values():
        row_ok &= ~mask
    for column in schema.with_role(Role.IDENTIFIER):
        valid_cells = frame[column.name].notna()
        frame[column.name] = _raw(raw[column.name]).where(valid_cells)
    return CheckedChunk(
        typed=frame,
        row_numbers=raw.index.to_numpy(dtype=np.int64) + 1,
        row_ok=row_ok,
        present=present,
        valid=valid,
        problems=problems,
        rule_violations=int(violations.sum()),
    )


def _raw(series: pd.Series) -> pd.Series:
    """An identifier as the file writes it (text stripped): ``000042`` is not ``42``."""
    if _is_text(series):
        return series.astype("str").str.strip()
    return series


def _is_text(series: pd.Series) -> bool:
    return not (
        pd.api.types.is_numeric_dtype(series)
        or pd.api.types.is_datetime64_any_dtype(series)
    )


def _check_column(
    series: pd.Series, column: Column, schema: Schema
) -> tuple[pd.Series, dict[str, Mask], Mask]:
    if _is_text(series):
        series = series.astype("str").str.strip().where(series.notna())
        missing = (series.isna() | series.isin(schema.missing_values)).to_numpy()
    else:
        missing = series.isna().to_numpy()
    series = series.where(~missing)
    values, type_bad = _parse(series, column, missing)
    findings: dict[str, Mask] = {"type": type_bad}
    if column.required or column.role is Role.TARGET:
        findings["missing"] = missing
    ok = ~missing & ~type_bad
    findings.update(_domain(values, column, ok))
    return values, findings, missing


def _parse(series: pd.Series, column: Column, missing: Mask) -> tuple[pd.Series, Mask]:
    if column.type in NUMERIC_TYPES:
        values = _to_float(series)
        array = values.to_numpy()
        bad = ~missing & ~np.isfinite(array)
        if column.type is ColumnType.INT:
            bad |= ~missing & np.isfinite(array) & (np.floor(array) != array)
        return values, bad
    if column.type is ColumnType.DATE:
        dates: pd.Series = series
        if not pd.api.types.is_datetime64_any_dtype(series):
            dates = pd.to_datetime(series, format=column.date_format, errors="coerce")
        return dates, ~missing & dates.isna().to_numpy()
    return series, np.zeros(len(series), dtype=bool)


def _to_float(series: pd.Series) -> pd.Series:
    """Numbers from text; unparseable cells become NaN (Arrow's cast, else pandas)."""
    if isinstance(series.dtype, pd.StringDtype) and series.dtype.storage == "pyarrow":
        try:
            cast = pc.cast(pa.array(series), pa.float64())
            return pd.Series(cast.to_numpy(zero_copy_only=False), index=series.index)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # some cell is not a plain number: let pandas sort them out
    return pd.to_numeric(series, errors="coerce").astype("float64")


def _domain(values: pd.Series, column: Column, ok: Mask) -> dict[str, Mask]:
    out: dict[str, Mask] = {}
    if column.min is not None or column.max is not None:
        low = _bound(column.min, column)
        high = _bound(column.max, column)
        below = values < low if low is not None else np.zeros(len(values), bool)
        above = values > high if high is not None else np.zeros(len(values), bool)
        out["range"] = ok & (np.asarray(below, bool) | np.asarray(above, bool))
    if column.categories is not None:
        allowed = values.isin(column.categories).to_numpy(dtype=bool)
        out["category"] = ok & ~allowed
    if column.pattern is not None:
        regex = re.compile(column.pattern)
        matched = np.zeros(len(values), dtype=bool)
        idx = np.flatnonzero(ok)
        matched[idx] = [bool(regex.fullmatch(str(v))) for v in values.iloc[idx]]
        out["pattern"] = ok & ~matched
    return out


def _bound(value: Any, column: Column) -> Any:
    if value is None:
        return None
    if column.type is ColumnType.DATE:
        return pd.Timestamp(value)
    return float(value)
