"""The schema contract: what a site's raw export must hold, and what each column is.

A schema is written in TOML (docs/data.md; :mod:`fedvault.client.data.schema_toml`)
and parsed once into the frozen dataclasses below. Each column has a *type* (how its
values are parsed and checked) and a *role* (what the pipeline does with it):

============================  =========================================================
role                          what happens
============================  =========================================================
``feature``                   model input; stored in the vault
``target``                    the label (exactly one column); stored; required
``identifier``                never stored raw: dropped, or a keyed pseudonym instead
``quasi-identifier``          generalized (bands, prefixes, month/year, shift), then
                              k-anonymity is enforced over all of them; a model input
``sensitive``                 a model input that is itself personal (e.g. a diagnosis
                              code); stored, but the quality report shows no values
``site``                      the site's own name; checked, then dropped
``drop``                      checked (type, range, rules), then dropped
============================  =========================================================
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

from fedvault.common.tables import MISSING_VALUES


class Role(StrEnum):
    FEATURE = "feature"
    TARGET = "target"
    IDENTIFIER = "identifier"
    QUASI_IDENTIFIER = "quasi-identifier"
    SENSITIVE = "sensitive"
    SITE = "site"
    DROP = "drop"


class ColumnType(StrEnum):
    INT = "int"
    FLOAT = "float"
    CATEGORY = "category"
    DATE = "date"
    TEXT = "text"
    ID = "id"


class Method(StrEnum):
    """How a quasi-identifier is generalized."""

    BAND = "band"  # numbers -> fixed-width bands ("40-49")
    PREFIX = "prefix"  # strings -> their first characters ("SW1")
    YEAR = "year"  # dates -> "2024"
    MONTH = "month"  # dates -> "2024-03"
    SHIFT = "shift"  # dates -> shifted by a keyed per-person offset


NUMERIC_TYPES = frozenset({ColumnType.INT, ColumnType.FLOAT})
STRING_TYPES = frozenset({ColumnType.CATEGORY, ColumnType.TEXT, ColumnType.ID})
#: Roles whose columns are stored in the vault and returned by ``read_frame``.
TRAINING_ROLES = frozenset(
    {Role.FEATURE, Role.QUASI_IDENTIFIER, Role.SENSITIVE, Role.TARGET}
)
DEFAULT_MISSING = MISSING_VALUES  # as ``simulate --data`` reads CSV files
DEFAULT_DATE_FORMAT = "%Y-%m-%d"


@dataclass(frozen=True, kw_only=True)
class Generalization:
    method: Method
    width: float | None = None  # band
    length: int | None = None  # prefix
    max_days: int | None = None  # shift

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method.value}
        for key, value in (
            ("width", self.width),
            ("length", self.length),
            ("max-days", self.max_days),
        ):
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, kw_only=True)
class Column:
    name: str
    type: ColumnType
    role: Role
    required: bool = False
    min: float | date | None = None
    max: float | date | None = None
    categories: tuple[str, ...] | None = None
    pattern: str | None = None
    date_format: str = DEFAULT_DATE_FORMAT
    pseudonymize: bool = False
    keep: bool = False
    generalize: Generalization | None = None

    @property
    def stored(self) -> bool:
        """Whether the column (raw, generalized or pseudonymized) goes to the vault."""
        if self.role is Role.IDENTIFIER:
            return self.pseudonymize
        if self.type is ColumnType.TEXT and not self.keep:
            return False
        return self.role in TRAINING_ROLES

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type.value, "role": self.role.value}
        if self.required:
            out["required"] = True
        for key, value in (("min", self.min), ("max", self.max)):
            if value is not None:
                out[key] = value.isoformat() if isinstance(value, date) else value
        if self.categories is not None:
            out["categories"] = list(self.categories)
        if self.pattern is not None:
            out["pattern"] = self.pattern
        if self.type is ColumnType.DATE:
            out["format"] = self.date_format
        if self.pseudonymize:
            out["pseudonymize"] = True
        if self.keep:
            out["keep"] = True
        if self.generalize is not None:
            out["generalize"] = self.generalize.to_dict()
        return out


@dataclass(frozen=True)
class Rule:
    """A cross-field rule ``left op right``, e.g. ``discharge_date >= admission_date``.

    A row violates it when both sides are present and valid and the comparison is false.
    """

    left: str
    op: str
    right: str

    @property
    def text(self) -> str:
        return f"{self.left} {self.op} {self.right}"


@dataclass(frozen=True)
class Freshness:
    """Timeliness: records whose ``column`` is at most ``max_age_days`` old."""

    column: str
    max_age_days: int


@dataclass(frozen=True, kw_only=True)
class Schema:
    name: str
    columns: tuple[Column, ...]
    k: int = 5
    max_suppressed_share: float = 0.05
    rules: tuple[Rule, ...] = ()
    freshness: Freshness | None = None
    as_of: date | None = None
    missing_values: tuple[str, ...] = DEFAULT_MISSING
    _by_name: dict[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {c.name: c for c in self.columns})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def target(self) -> Column:
        return next(c for c in self.columns if c.role is Role.TARGET)

    def column(self, name: str) -> Column:
        return self._by_name[name]

    def with_role(self, *roles: Role) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.role in roles)

    @property
    def stored(self) -> tuple[Column, ...]:
        """Columns written to the vault, in schema order."""
        return tuple(c for c in self.columns if c.stored)

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain form (kebab-case keys), as stored in the vault manifest."""
        dataset: dict[str, Any] = {
            "name": self.name,
            "k": self.k,
            "max-suppressed-share": self.max_suppressed_share,
            "missing-values": list(self.missing_values),
            "rules": [r.text for r in self.rules],
        }
        if self.as_of is not None:
            dataset["as-of"] = self.as_of.isoformat()
        if self.freshness is not None:
            dataset["freshness"] = {
                "column": self.freshness.column,
                "max-age-days": self.freshness.max_age_days,
            }
        return {
            "dataset": dataset,
            "columns": {c.name: c.to_dict() for c in self.columns},
        }

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form: equal contracts, equal digests."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
