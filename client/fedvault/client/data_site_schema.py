"""The schema contract a site training on a plain file names (``schema = PATH``
beside ``data = PATH`` in ``[site]``), checked against that file before the
SuperNode starts.

A data site uses only the contract's declarations for its summary release: the
bounds of numeric columns and the label classes (and other categories). It
trains on its file as it is: roles that transform data (``drop``, ``identifier``,
``quasi-identifier``, ``sensitive``, ``site``), generalization and
pseudonymization are applied by ``fedvault data import`` alone, so a contract
that asks for them is refused here rather than silently not applied.
"""

from __future__ import annotations

from pathlib import Path

from fedvault.client.data.schema import Role
from fedvault.client.data.schema_toml import load_schema
from fedvault.common.data import load_table
from fedvault.common.errors import ConfigError, DataError

APPLIED_ROLES = (Role.FEATURE, Role.TARGET)


def check_data_schema(data: Path, path: Path) -> None:
    """Check a data site's schema contract ``path`` against its file ``data``.

    Raises:
        ConfigError: one line starting ``schema:``, when the path is not a file,
            the contract is invalid, asks for an import-time transformation, names
            a column the file lacks, or declares label classes that leave out a
            label value the file holds (its rows would lose their label).
    """
    if path.is_dir():
        raise ConfigError(f"schema: {path} is a folder, not a schema file")
    try:
        schema = load_schema(path)
    except ConfigError as exc:
        raise ConfigError(f"schema: {exc}") from None
    for column in schema.columns:
        what = ""
        if column.role not in APPLIED_ROLES:
            what = f"role {column.role.value}"
        elif column.generalize is not None or column.pseudonymize:
            what = "a generalization or pseudonym"
        if what:
            raise ConfigError(
                f"schema: {path}: column {column.name!r} has {what}, which only "
                "`fedvault data import` applies (a data site trains on its file as "
                "it is); import the file into a vault, or keep only feature and "
                "target columns"
            )
    try:
        frame = load_table(data)
    except DataError as exc:
        raise ConfigError(f"data: {exc}") from None
    missing = [c.name for c in schema.columns if c.name not in frame.columns]
    if missing:
        shown = ", ".join(repr(name) for name in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ConfigError(f"schema: {path} names column(s) {data} lacks: {shown}{more}")
    for column in schema.columns:
        if column.role is not Role.TARGET or not column.categories:
            continue
        held = set(frame[column.name].dropna().astype(str))
        strays = sorted(held - set(column.categories))
        if strays:
            raise ConfigError(
                f"schema: target {column.name!r} in {data} holds label(s) {path} "
                f"does not declare: {', '.join(map(repr, strays[:5]))} (declared: "
                f"{', '.join(map(repr, column.categories))})"
            )
