"""Consistency checks of a parsed schema contract: options that fit types and roles,
one target, rules and freshness over existing columns of the right types.

Every failure is a :class:`~fedvault.common.errors.ConfigError` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedvault.client.data.schema import (
    NUMERIC_TYPES,
    STRING_TYPES,
    Column,
    ColumnType,
    Method,
    Role,
    Schema,
)
from fedvault.common.errors import ConfigError

METHOD_TYPES = {
    Method.BAND: NUMERIC_TYPES,
    Method.PREFIX: STRING_TYPES,
    Method.YEAR: frozenset({ColumnType.DATE}),
    Method.MONTH: frozenset({ColumnType.DATE}),
    Method.SHIFT: frozenset({ColumnType.DATE}),
}
# A float target is a regression's (the task is inferred from the values).
TARGET_TYPES = frozenset({ColumnType.INT, ColumnType.FLOAT, ColumnType.CATEGORY})


def check_column(  # noqa: C901 - one flat list of compatibility checks
    column: Column, spec: Mapping[str, Any], source: str, where: str
) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: {where}{key}: {why}")

    ctype, role = column.type, column.role
    if ("min" in spec or "max" in spec) and ctype not in (
        *NUMERIC_TYPES,
        ColumnType.DATE,
    ):
        raise bad("min", f"ranges apply to int, float and date columns, not {ctype}")
    if column.categories is not None and ctype is not ColumnType.CATEGORY:
        raise bad("categories", "only category columns list categories")
    if column.pattern is not None and ctype not in STRING_TYPES:
        raise bad("pattern", "patterns apply to category, text and id columns")
    if "format" in spec and ctype is not ColumnType.DATE:
        raise bad("format", "only date columns have a format")
    if column.pseudonymize and role is not Role.IDENTIFIER:
        raise bad("pseudonymize", "only identifier columns are pseudonymized")
    if column.keep and ctype is not ColumnType.TEXT:
        raise bad("keep", "only text columns need keep = true to be stored")
    if role is Role.TARGET and ctype not in TARGET_TYPES:
        raise bad("type", "the target must be an int, float or category column")
    if role is Role.TARGET and not column.required:
        raise bad("required", "the target column is always required")
    gen = column.generalize
    if gen is not None:
        if role is not Role.QUASI_IDENTIFIER:
            raise bad("generalize", "only quasi-identifier columns are generalized")
        if ctype not in METHOD_TYPES[gen.method]:
            raise bad("generalize", f"method {gen.method.value!r} does not fit {ctype}")


def check_dataset(schema: Schema, source: str) -> None:
    targets = schema.with_role(Role.TARGET)
    if len(targets) != 1:
        raise ConfigError(
            f'{source}: exactly one column needs role = "target" (found {len(targets)})'
        )
    if not any(c.stored and c.role is not Role.TARGET for c in schema.columns):
        raise ConfigError(f"{source}: no column is a model input (role feature, ...)")
    if schema.k < 1:
        raise ConfigError(f"{source}: dataset.k: must be >= 1, got {schema.k}")
    if not 0.0 <= schema.max_suppressed_share <= 1.0:
        raise ConfigError(f"{source}: dataset.max-suppressed-share: must be in [0, 1]")
    for rule in schema.rules:
        kinds = []
        for name in (rule.left, rule.right):
            if name not in schema.names:
                raise ConfigError(
                    f"{source}: dataset.rules: {rule.text!r} names unknown column "
                    f"{name!r}"
                )
            ctype = schema.column(name).type
            kinds.append("number" if ctype in NUMERIC_TYPES else ctype.value)
        if kinds[0] != kinds[1] or kinds[0] not in ("number", "date"):
            raise ConfigError(
                f"{source}: dataset.rules: {rule.text!r} must compare two number "
                "or two date columns"
            )
    fresh = schema.freshness
    if fresh is not None and (
        fresh.column not in schema.names
        or schema.column(fresh.column).type is not ColumnType.DATE
    ):
        raise ConfigError(
            f"{source}: dataset.freshness.column: {fresh.column!r} is not a date column"
        )
    shifts = [
        c
        for c in schema.columns
        if c.generalize and c.generalize.method is Method.SHIFT
    ]
    if shifts and not schema.with_role(Role.IDENTIFIER):
        raise ConfigError(
            f"{source}: columns.{shifts[0].name}.generalize: shift needs an "
            "identifier column to key the per-person offset"
        )
