"""Reading and writing schema contracts as TOML.

Parsing is strict: unknown keys, unknown types or roles, options that do not fit the
column's type or role, and rules naming unknown columns all raise
:class:`~fedvault.common.errors.ConfigError` naming the offending key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from fedvault.client.data.schema import (
    DEFAULT_DATE_FORMAT,
    DEFAULT_MISSING,
    Column,
    ColumnType,
    Freshness,
    Generalization,
    Method,
    Role,
    Rule,
    Schema,
)
from fedvault.client.data.schema_checks import check_column, check_dataset
from fedvault.common.errors import ConfigError

_RULE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|==|!=|>|<)\s*([A-Za-z_][\w.]*)\s*$")
_COLUMN_KEYS = frozenset(
    {"type", "role", "required", "min", "max", "categories", "pattern", "format"}
    | {"pseudonymize", "keep", "generalize"}
)
_DATASET_KEYS = frozenset(
    {"name", "k", "max-suppressed-share", "rules", "freshness", "as-of"}
    | {"missing-values"}
)


def load_schema(path: Path) -> Schema:
    """Read and validate a schema contract file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"schema file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the schema ({exc})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return parse_schema(data, source=str(path))


def parse_schema(data: Mapping[str, Any], *, source: str = "schema") -> Schema:
    """Build a :class:`Schema` from its TOML form (``Schema.to_dict`` inverts it)."""
    _known(data, {"dataset", "columns"}, source, "")
    dataset = _table(data.get("dataset", {}), source, "dataset")
    _known(dataset, _DATASET_KEYS, source, "dataset.")
    raw_columns = _table(data.get("columns"), source, "columns")
    if not raw_columns:
        raise ConfigError(f"{source}: [columns] is empty; describe every column")
    columns = tuple(
        _column(str(name), _table(spec, source, f"columns.{name}"), source)
        for name, spec in raw_columns.items()
    )
    schema = Schema(
        name=_get(dataset, "name", str, source, "dataset.", default="dataset"),
        columns=columns,
        k=_get(dataset, "k", int, source, "dataset.", default=5),
        max_suppressed_share=float(
            _get(dataset, "max-suppressed-share", float, source, "dataset.", 0.05)
        ),
        rules=tuple(_rule(r, source) for r in _list(dataset, "rules", source)),
        freshness=_freshness(dataset.get("freshness"), source),
        as_of=_date_value(dataset.get("as-of"), source, "dataset.as-of"),
        missing_values=tuple(
            str(v) for v in _list(dataset, "missing-values", source, DEFAULT_MISSING)
        ),
    )
    check_dataset(schema, source)
    return schema


def _column(name: str, spec: Mapping[str, Any], source: str) -> Column:
    where = f"columns.{name}."
    _known(spec, _COLUMN_KEYS, source, where)
    ctype = _enum(ColumnType, spec.get("type"), source, where + "type")
    role = _enum(Role, spec.get("role"), source, where + "role")
    date_format = _get(spec, "format", str, source, where, DEFAULT_DATE_FORMAT)
    bounds = [
        _bound(spec.get(key), ctype, date_format, source, where + key)
        for key in ("min", "max")
    ]
    categories = spec.get("categories")
    if categories is not None:
        if not isinstance(categories, list) or not categories:
            raise ConfigError(f"{source}: {where}categories: expected a non-empty list")
        categories = tuple(str(c) for c in categories)
    column = Column(
        name=name,
        type=ctype,
        role=role,
        required=_get(spec, "required", bool, source, where, role is Role.TARGET),
        min=bounds[0],
        max=bounds[1],
        categories=categories,
        pattern=_pattern(spec.get("pattern"), source, where),
        date_format=date_format,
        pseudonymize=_get(spec, "pseudonymize", bool, source, where, False),
        keep=_get(spec, "keep", bool, source, where, False),
        generalize=_generalization(spec.get("generalize"), source, where),
    )
    check_column(column, spec, source, where)
    return column


def _generalization(value: Any, source: str, where: str) -> Generalization | None:
    if value is None:
        return None
    spec = _table(value, source, where + "generalize")
    key = where + "generalize."
    _known(spec, {"method", "width", "length", "max-days"}, source, key)
    method = _enum(Method, spec.get("method"), source, key + "method")
    needs = {Method.BAND: "width", Method.PREFIX: "length", Method.SHIFT: "max-days"}
    needed = needs.get(method)
    for option in ("width", "length", "max-days"):
        if option in spec and option != needed:
            raise ConfigError(f"{source}: {key}{option}: not used by {method.value!r}")
    if needed is not None:
        amount = spec.get(needed)
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise ConfigError(f"{source}: {key}{needed}: required, a positive number")
        if amount <= 0 or (needed != "width" and not float(amount).is_integer()):
            raise ConfigError(f"{source}: {key}{needed}: must be a positive integer")
    return Generalization(
        method=method,
        width=float(spec["width"]) if "width" in spec else None,
        length=int(spec["length"]) if "length" in spec else None,
        max_days=int(spec["max-days"]) if "max-days" in spec else None,
    )


def _rule(value: Any, source: str) -> Rule:
    match = _RULE.match(str(value))
    if not isinstance(value, str) or match is None:
        raise ConfigError(
            f"{source}: dataset.rules: cannot read {value!r}; write e.g. "
            '"discharge_date >= admission_date"'
        )
    return Rule(match[1], match[2], match[3])


def _freshness(value: Any, source: str) -> Freshness | None:
    if value is None:
        return None
    spec = _table(value, source, "dataset.freshness")
    _known(spec, {"column", "max-age-days"}, source, "dataset.freshness.")
    column = _get(spec, "column", str, source, "dataset.freshness.", None)
    days = _get(spec, "max-age-days", int, source, "dataset.freshness.", None)
    if column is None or days is None or days <= 0:
        raise ConfigError(
            f'{source}: dataset.freshness: needs column = "..." and max-age-days > 0'
        )
    return Freshness(column=column, max_age_days=days)


def _bound(
    value: Any, ctype: ColumnType, fmt: str, source: str, key: str
) -> float | date | None:
    if value is None:
        return None
    if ctype is ColumnType.DATE:
        return _date_value(value, source, key, fmt)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{source}: {key}: expected a number, got {value!r}")
    return float(value)


def _date_value(
    value: Any, source: str, key: str, fmt: str = DEFAULT_DATE_FORMAT
) -> date | None:
    if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
        return value
    if isinstance(value, str):
        for form in dict.fromkeys((fmt, DEFAULT_DATE_FORMAT)):
            try:
                return datetime.strptime(value, form).date()
            except ValueError:
                continue
    raise ConfigError(f"{source}: {key}: expected a date (YYYY-MM-DD), got {value!r}")


def _pattern(value: Any, source: str, where: str) -> str | None:
    if value is None:
        return None
    try:
        re.compile(str(value))
    except re.error as exc:
        raise ConfigError(
            f"{source}: {where}pattern: not a valid regex ({exc})"
        ) from exc
    return str(value)


def _enum(enum: Any, value: Any, source: str, key: str) -> Any:
    allowed = ", ".join(repr(m.value) for m in enum)
    if value is None:
        raise ConfigError(f"{source}: {key}: missing; use one of {allowed}")
    try:
        return enum(value)
    except ValueError:
        raise ConfigError(
            f"{source}: {key}: unknown {value!r}; use one of {allowed}"
        ) from None


def _get(
    spec: Mapping[str, Any], key: str, kind: type, source: str, where: str, default: Any
) -> Any:
    value = spec.get(key, default)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(
            f"{source}: {where}{key}: expected {kind.__name__}, got {value!r}"
        )
    return value


def _list(
    spec: Mapping[str, Any], key: str, source: str, default: Any = ()
) -> list[Any]:
    value = spec.get(key, default)
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{source}: dataset.{key}: expected a list, got {value!r}")
    return list(value)


def _table(value: Any, source: str, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: [{key}]: expected a table")
    return value


def _known(
    spec: Mapping[str, Any], known: frozenset[str] | set[str], source: str, where: str
) -> None:
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: {where}{unknown[0]}: unknown key; known keys: "
            f"{', '.join(sorted(known))}"
        )
