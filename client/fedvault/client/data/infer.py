"""``fedvault data schema infer``: a draft schema contract from a raw export.

The whole file is profiled in chunks: each column's type (int, float, date with its
format, category, text or id), whether values are ever missing, and a sample of values
for the personal-data patterns of :mod:`fedvault.client.data.pii`. Columns that look
personal get a protective role (identifier, quasi-identifier or drop) and a comment
saying why. The label column is guessed by name, among the columns that can be
labels only (never personal data, never mostly distinct values); when none can,
the draft names no target and says so. Types follow the rule ``simulate --data``
reads CSV columns by (:class:`fedvault.common.data.ColumnTally`). A draft is a
starting point for a human to review, never a contract to trust as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd

from fedvault.client.data.pii import (
    SUGGESTED_ROLE,
    Finding,
    PiiKind,
    detect,
    looks_like_birth_dates,
)
from fedvault.client.data.reader import ReadOptions, iter_chunks, read_header
from fedvault.client.data.schema import (
    DEFAULT_MISSING,
    Column,
    ColumnType,
    Generalization,
    Method,
    Role,
    Schema,
)
from fedvault.client.data.schema_writer import schema_to_toml
from fedvault.common.data import (
    MAX_LABEL_CLASSES,
    NUMBER,
    ColumnKind,
    ColumnTally,
)
from fedvault.common.errors import DataError

DATE_FORMATS = (
    "%Y-%m-%d",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%d.%m.%Y",
    "%Y/%m/%d",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
)
TARGET_NAMES = ("target", "label", "diagnosis", "outcome", "class", "y", "default")
_MAX_CATEGORIES = 20
_SITE_WORDS = frozenset(
    {"site", "hospital", "clinic", "centre", "center", "branch", "facility", "bank"}
)
_SAMPLE = 2000


@dataclass
class _Profile:
    rows: int = 0
    missing: int = 0
    tally: ColumnTally = field(default_factory=ColumnTally)
    formats: list[str] = field(default_factory=lambda: list(DATE_FORMATS))
    distinct: set[str] = field(default_factory=set)
    overflow: bool = False
    sample: list[str] = field(default_factory=list)
    low: float | None = None
    high: float | None = None

    def add(self, series: pd.Series) -> None:
        self.rows += len(series)
        text = series.dropna().astype(str).str.strip()
        text = text[~text.isin(DEFAULT_MISSING)]
        self.missing += len(series) - len(text)
        if text.empty:
            return
        self.tally.add(text)
        numbers = pd.to_numeric(text[text.str.fullmatch(NUMBER)]).astype("float64")
        if len(numbers):
            self.formats = []  # a date column holds no plain numbers
            low, high = float(numbers.min()), float(numbers.max())
            self.low = low if self.low is None else min(self.low, low)
            self.high = high if self.high is None else max(self.high, high)
        elif self.formats:
            self.formats = [f for f in self.formats if _all_dates(text, f)]
        if not self.overflow:
            self.distinct.update(text.unique()[: _MAX_CATEGORIES * 3].tolist())
            self.overflow = len(self.distinct) > _MAX_CATEGORIES * 2
        if len(self.sample) < _SAMPLE:
            self.sample.extend(text.iloc[: _SAMPLE - len(self.sample)].tolist())

    @property
    def labels(self) -> bool:
        """Whether the values could be class labels: 2 to 20 classes that are not
        mostly single rows (on average two rows or more each)."""
        present = self.rows - self.missing
        classes = len(self.distinct)
        return (
            not self.overflow
            and 2 <= classes <= MAX_LABEL_CLASSES
            and (2 * classes <= present)
        )


@dataclass(frozen=True)
class Draft:
    """A draft schema, why each column got its role, and the personal-data findings."""

    schema: Schema
    notes: dict[str, tuple[str, ...]]
    findings: dict[str, tuple[Finding, ...]]

    def to_toml(self, source: str) -> str:
        header = [
            f"DRAFT schema contract inferred from {source} by `fedvault data "
            "schema infer`.",
            "Review every column before use: roles decide what leaves the site.",
        ]
        if not self.schema.with_role(Role.TARGET):
            header.append(
                'No column looks like a label: give one role = "target" (an int or '
                "category column with a few classes, not personal data)."
            )
        return schema_to_toml(self.schema, header=header, notes=self.notes)


def infer_schema(
    path: Path, *, options: ReadOptions | None = None, today: date | None = None
) -> Draft:
    """Profile ``path`` and draft its schema (see the module docstring)."""
    options = options or ReadOptions()
    names = read_header(path, options)
    profiles = {name: _Profile() for name in names}
    for chunk in iter_chunks(path, options, DEFAULT_MISSING):
        for name in names:
            profiles[name].add(chunk[name])
    if not profiles[names[0]].rows:
        raise DataError(f"{path}: no data rows")
    today = today or date.today()
    drafted = {name: _draft_column(name, profiles[name], today) for name in names}
    target = _target_name(drafted, profiles)
    columns: list[Column] = []
    notes: dict[str, tuple[str, ...]] = {}
    findings: dict[str, tuple[Finding, ...]] = {}
    for name, (column, why, found) in drafted.items():
        if name == target:
            column, why = _as_target(column, why)
        columns.append(column)
        notes[name], findings[name] = tuple(why), tuple(found)
    if not any(c.role is not Role.TARGET and c.stored for c in columns):
        raise DataError(f"{path}: no column looks like a model input")
    return Draft(
        schema=Schema(name=path.stem, columns=tuple(columns)),
        notes=notes,
        findings=findings,
    )


def _draft_column(
    name: str, profile: _Profile, today: date
) -> tuple[Column, list[str], list[Finding]]:
    ctype, fmt = _type(profile)
    # numbers reveal themselves only by name; strings by name and values
    found = detect(name, [] if ctype in _NUMERIC else profile.sample)
    if ctype is ColumnType.DATE and PiiKind.DATE_OF_BIRTH not in {
        f.kind for f in found
    }:
        dates = pd.to_datetime(pd.Series(profile.sample), format=fmt, errors="coerce")
        if looks_like_birth_dates([d.date() for d in dates.dropna()], today=today):
            found.append(Finding(PiiKind.DATE_OF_BIRTH, "values"))
    why = [f"PII? {f.describe()}" for f in found] + _observed(profile, ctype)
    kinds = sorted((f.kind for f in found), key=_priority)
    role = SUGGESTED_ROLE.get(kinds[0], Role.IDENTIFIER) if kinds else Role.FEATURE
    if kinds and kinds[0] is PiiKind.FREE_TEXT:
        ctype = ColumnType.TEXT
    if kinds and kinds[0] is PiiKind.POSTCODE:
        ctype = ColumnType.ID  # codes, not numbers: keep leading zeros
    if role is Role.FEATURE and ctype is ColumnType.DATE:
        role = Role.DROP
        why.append("dates are no model input: use it in rules or freshness, or drop")
    if role is Role.FEATURE and _is_site(name, profile):
        role = Role.SITE
    categories = None
    if ctype is ColumnType.CATEGORY and role is not Role.IDENTIFIER:
        categories = tuple(sorted(profile.distinct))
    column = Column(
        name=name,
        type=ctype,
        role=role,
        required=profile.missing == 0,
        categories=categories,
        date_format=fmt or "%Y-%m-%d",
        pseudonymize=bool(kinds) and kinds[0] is PiiKind.RECORD_ID,
        generalize=_generalization(ctype, role),
    )
    return column, why, found


def _observed(profile: _Profile, ctype: ColumnType) -> list[str]:
    """Notes on the values: range, cells that are no numbers, missing values."""
    why = []
    tally = profile.tally
    if ctype in _NUMERIC and profile.low is not None:
        why.append(f"observed range {profile.low:g} .. {profile.high:g}")
    if ctype in _NUMERIC and tally.stray_cells:
        why.append(
            f"not numbers: {tally.describe_strays()}; import rejects those rows: "
            "fix them or leave them empty"
        )
    elif tally.mostly_numbers and tally.kind is ColumnKind.TEXT:
        why.append(f"text, as besides numbers it holds {tally.describe_strays()}")
    if profile.missing:
        why.append(f"{profile.missing} of {profile.rows} values missing")
    return why


_NUMERIC = (ColumnType.INT, ColumnType.FLOAT)
_ORDER = {Role.IDENTIFIER: 0, Role.QUASI_IDENTIFIER: 1, Role.DROP: 2}


def _priority(kind: PiiKind) -> int:
    """Identifiers outrank quasi-identifiers, which outrank free text."""
    return _ORDER[SUGGESTED_ROLE.get(kind, Role.IDENTIFIER)]


def _type(profile: _Profile) -> tuple[ColumnType, str | None]:
    """The column's type by :class:`ColumnTally`'s rule (as ``simulate`` reads it);
    codes (``000042``) and text are told apart by their values."""
    kind = profile.tally.kind
    if kind is ColumnKind.EMPTY:
        return ColumnType.TEXT, None
    if kind is ColumnKind.NUMBER:
        return (ColumnType.INT if profile.tally.whole else ColumnType.FLOAT), None
    if profile.formats:
        return ColumnType.DATE, profile.formats[0]
    sample = profile.sample
    mean_len = sum(len(s) for s in sample) / len(sample)
    present = profile.rows - profile.missing
    if not profile.overflow and len(profile.distinct) <= min(
        _MAX_CATEGORIES, max(2, present // 2)
    ):
        return ColumnType.CATEGORY, None
    if mean_len >= 25 and sum(len(s.split()) for s in sample) / len(sample) >= 4:
        return ColumnType.TEXT, None
    return ColumnType.ID, None


def _is_site(name: str, profile: _Profile) -> bool:
    words = set(name.lower().replace("-", "_").split("_"))
    return len(profile.distinct) == 1 and bool(words & _SITE_WORDS)


def _generalization(ctype: ColumnType, role: Role) -> Generalization | None:
    if role is not Role.QUASI_IDENTIFIER:
        return None
    if ctype is ColumnType.INT:
        return Generalization(method=Method.BAND, width=10)
    if ctype is ColumnType.DATE:
        return Generalization(method=Method.YEAR)
    if ctype is ColumnType.ID:
        return Generalization(method=Method.PREFIX, length=3)
    return None


def _target_name(
    drafted: dict[str, tuple[Column, list[str], list[Finding]]],
    profiles: dict[str, _Profile],
) -> str | None:
    """The label guess: by name (:data:`TARGET_NAMES`), else the last column, but
    only among columns that can be labels: features of type int or category, not
    personal data, with 2 to 20 classes that are not mostly single rows."""
    fit = [
        name
        for name, (column, _, found) in drafted.items()
        if not found
        and column.role is Role.FEATURE
        and column.type in (ColumnType.INT, ColumnType.CATEGORY)
        and profiles[name].labels
    ]
    lowered = {n.lower(): n for n in fit}
    for candidate in TARGET_NAMES:
        if candidate in lowered:
            return lowered[candidate]
    return fit[-1] if fit else None


def _as_target(column: Column, why: list[str]) -> tuple[Column, list[str]]:
    why = [*why, "the label column (role target): check this guess"]
    target = Column(
        name=column.name,
        type=column.type,
        role=Role.TARGET,
        required=True,
        categories=column.categories,
    )
    return target, why


def _all_dates(text: pd.Series, fmt: str) -> bool:
    return not pd.to_datetime(text, format=fmt, errors="coerce").isna().any()
