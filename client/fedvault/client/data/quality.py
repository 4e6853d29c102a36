"""The data-quality report of one import (formulas in docs/data.md).

Over the rows *received* (every data row of the raw file, before any cleaning), for
the schema's columns:

- completeness  = non-missing cells / rows, per column; overall over all cells;
- validity      = valid cells / non-missing cells (type, range, categories, pattern);
- consistency   = 1 - rows breaking a cross-field rule / rows; duplicate rate =
  (rows - distinct rows) / rows, rows compared on every column of the raw file;
- timeliness    = rows whose freshness date lies in [as-of - max-age, as-of] / rows
  with a valid freshness date;
- availability  = rows stored in the vault / rows received.

Over the rows *stored*: class balance of the target and a per-column summary (numbers:
count, missing, min, max, mean, standard deviation; dates: min, max; categories: the
most frequent values). Identifier and sensitive columns get counts only, no values.
The report lives inside the encrypted manifest; it is never logged.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fedvault.client.data.schema import Role, Schema
from fedvault.client.data.validate import CheckedChunk

_TOP = 10
_MAX_DISTINCT = 1000


@dataclass
class _Summary:
    count: int = 0
    missing: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations (merged chunk-wise, Chan et al.)
    low: Any = None
    high: Any = None
    values: Counter[str] = field(default_factory=Counter)
    overflow: bool = False
    numeric: bool = False


class QualityMeter:
    """Accumulates the quality report chunk by chunk (two passes: received, stored)."""

    def __init__(self, schema: Schema, *, as_of: date) -> None:
        self.schema = schema
        self.as_of = as_of
        self.rows = 0
        self.present = dict.fromkeys(schema.names, 0)
        self.valid = dict.fromkeys(schema.names, 0)
        self.rule_violations = 0
        self.timely = 0
        self.dated = 0
        self._hashes: list[npt.NDArray[np.uint64]] = []
        self._summaries: dict[str, _Summary] = {}
        self._labels: Counter[str] = Counter()

    def add_received(self, raw: pd.DataFrame, checked: CheckedChunk) -> None:
        self.rows += len(raw)
        for name in self.schema.names:
            self.present[name] += checked.present[name]
            self.valid[name] += checked.valid[name]
        self.rule_violations += checked.rule_violations
        self._hashes.append(_row_hashes(raw))
        fresh = self.schema.freshness
        if fresh is not None:
            dates = checked.typed[fresh.column]
            oldest = pd.Timestamp(self.as_of - timedelta(days=fresh.max_age_days))
            newest = pd.Timestamp(self.as_of)
            self.dated += int(dates.notna().sum())
            self.timely += int(((dates >= oldest) & (dates <= newest)).sum())

    def add_stored(self, frame: pd.DataFrame) -> None:
        target = self.schema.target.name
        self._labels.update(frame[target].astype(str).tolist())
        for name in frame.columns:
            self._summarize(name, frame[name])

    def report(self, *, invalid: int, suppressed: int, stored: int) -> dict[str, Any]:
        rows, names = self.rows, self.schema.names
        present, valid = sum(self.present.values()), sum(self.valid.values())
        distinct = int(np.unique(np.concatenate(self._hashes)).size) if rows else 0
        labels = sum(self._labels.values())
        return {
            "rows-received": rows,
            "rows-invalid": invalid,
            "rows-suppressed": suppressed,
            "rows-stored": stored,
            "completeness": {
                "overall": _ratio(present, rows * len(names)),
                "columns": {n: _ratio(self.present[n], rows) for n in names},
            },
            "validity": {
                "overall": _ratio(valid, present),
                "columns": {n: _ratio(self.valid[n], self.present[n]) for n in names},
            },
            "consistency": {
                "rules": [r.text for r in self.schema.rules],
                "rows-breaking-rules": self.rule_violations,
                "rules-passed": _ratio(rows - self.rule_violations, rows),
                "duplicate-rows": rows - distinct,
                "duplicate-rate": _ratio(rows - distinct, rows),
            },
            "timeliness": self._timeliness(),
            "availability": _ratio(stored, rows),
            "class-balance": {
                label: {"count": n, "share": _ratio(n, labels)}
                for label, n in sorted(self._labels.items())
            },
            "columns": {n: self._column_report(n) for n in self._summaries},
        }

    def _timeliness(self) -> dict[str, Any] | None:
        fresh = self.schema.freshness
        if fresh is None:
            return None
        return {
            "column": fresh.column,
            "max-age-days": fresh.max_age_days,
            "as-of": self.as_of.isoformat(),
            "rows-dated": self.dated,
            "rows-timely": self.timely,
            "share": _ratio(self.timely, self.dated),
        }

    def _summarize(self, name: str, series: pd.Series) -> None:
        summary = self._summaries.setdefault(name, _Summary())
        present = series.dropna()
        summary.count += len(present)
        summary.missing += len(series) - len(present)
        role = self.schema.column(name).role
        if role in (Role.IDENTIFIER, Role.SENSITIVE) or present.empty:
            return
        if pd.api.types.is_numeric_dtype(
            present
        ) or pd.api.types.is_datetime64_any_dtype(present):
            low, high = present.min(), present.max()
            summary.low = low if summary.low is None else min(summary.low, low)
            summary.high = high if summary.high is None else max(summary.high, high)
            if pd.api.types.is_numeric_dtype(present):
                summary.numeric = True
                _merge_moments(summary, present.to_numpy(dtype=np.float64))
            return
        if not summary.overflow:
            summary.values.update(present.astype(str).tolist())
            summary.overflow = len(summary.values) > _MAX_DISTINCT

    def _column_report(self, name: str) -> dict[str, Any]:
        s = self._summaries[name]
        out: dict[str, Any] = {"count": s.count, "missing": s.missing}
        if s.low is not None:
            out["min"], out["max"] = _plain(s.low), _plain(s.high)
        if s.numeric and s.count:
            var = s.m2 / (s.count - 1) if s.count > 1 else 0.0
            out["mean"], out["std"] = s.mean, math.sqrt(max(var, 0.0))
        if s.values and not s.overflow:
            out["distinct"] = len(s.values)
            out["top"] = dict(s.values.most_common(_TOP))
        elif s.overflow:
            out["distinct"] = f"> {_MAX_DISTINCT}"
        return out


def _row_hashes(raw: pd.DataFrame) -> npt.NDArray[np.uint64]:
    """A 64-bit hash of each raw row (for the duplicate rate).

    Text rows are joined into one string per row first (one hash instead of one per
    column); other frames are hashed column by column.
    """
    columns = [raw[c] for c in raw.columns]
    if raw.empty or not all(isinstance(c.dtype, pd.StringDtype) for c in columns):
        return np.asarray(pd.util.hash_pandas_object(raw, index=False), np.uint64)
    arrays = [pa.array(c).cast(pa.large_string()) for c in columns]
    separator = pa.scalar("\x1f", pa.large_string())
    joined = pc.binary_join_element_wise(
        *arrays, separator, null_handling="replace", null_replacement="\x00"
    )
    series = pd.Series(joined.to_pandas(), dtype="str")
    return np.asarray(pd.util.hash_pandas_object(series, index=False), np.uint64)


def _merge_moments(summary: _Summary, values: np.ndarray[Any, Any]) -> None:
    """Fold a chunk's mean and squared deviations into the running ones.

    ``summary.count`` already includes this chunk's values.
    """
    n_new = len(values)
    n_old = summary.count - n_new
    mean_new = float(values.mean())
    m2_new = float(np.square(values - mean_new).sum())
    delta = mean_new - summary.mean
    summary.mean += delta * n_new / summary.count
    summary.m2 += m2_new + delta * delta * n_old * n_new / summary.count


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value
