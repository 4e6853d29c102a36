"""``fedvault data import``: raw export -> checked, anonymized, measured, encrypted.

The raw file is read twice, in chunks, so memory stays bounded by the chunk size
(plus one 8-byte hash per row for the duplicate rate and one counter per
quasi-identifier class):

1. *survey*: validate every row, measure quality, count the rows of each
   quasi-identifier class and of each label class. Invalid rows fail the import
   (default) or are dropped; a target whose classes are mostly single rows is
   refused (:func:`fedvault.common.data.check_label_classes`); k-anonymity
   suppression is decided here. Nothing is written if anything fails.
2. *write*: validate and anonymize again, drop the suppressed rows, encrypt each chunk
   into a new vault generation, and commit it atomically with its manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from fedvault.client.data.anonymize import (
    ClassCounter,
    anonymize,
    class_keys,
    needs_secret,
    quasi_columns,
    quasi_frame,
    suppression_mask,
)
from fedvault.client.data.quality import QualityMeter
from fedvault.client.data.reader import ReadOptions, check_columns, iter_chunks
from fedvault.client.data.reader import read_header as read_raw_header
from fedvault.client.data.schema import Role, Schema
from fedvault.client.data.validate import ValidationReport, check_chunk
from fedvault.client.data.vault_format import Manifest
from fedvault.client.data.vault_writer import VaultWriter, check_replace
from fedvault.common.data import check_label_classes
from fedvault.common.errors import ConfigError, DataError, SchemaError

logger = logging.getLogger(__name__)


class OnInvalid(StrEnum):
    """What to do with rows that break the schema."""

    FAIL = "fail"
    DROP = "drop"


@dataclass(frozen=True, kw_only=True)
class ImportOptions:
    on_invalid: OnInvalid = OnInvalid.FAIL
    read: ReadOptions = field(default_factory=ReadOptions)
    as_of: date | None = None  # reference date for timeliness; default: schema, today
    # Replace a dataset already in the vault (only under the key that opens it).
    replace: bool = False


@dataclass(frozen=True)
class ImportResult:
    manifest: Manifest
    validation: dict[str, Any]
    replaced: Manifest | None = None  # the dataset this import replaced


@dataclass
class _Survey:
    report: ValidationReport
    meter: QualityMeter
    classes: ClassCounter
    labels: ClassCounter


def import_raw(
    raw: Path,
    schema: Schema,
    vault_dir: Path,
    *,
    key: bytes,
    secret: bytes | None = None,
    options: ImportOptions | None = None,
    kdf_salt: bytes | None = None,
) -> ImportResult:
    """Import ``raw`` into ``vault_dir`` under ``schema``; see the module docstring.

    ``key`` encrypts the vault; ``secret`` keys pseudonyms and date shifts (needed only
    when the schema uses them); ``kdf_salt`` is stored for passphrase-derived keys.
    Raises DataError / SchemaError / ConfigError with the vault left unchanged.
    """
    options = options or ImportOptions()
    if needs_secret(schema) and secret is None:
        raise ConfigError(
            "the schema pseudonymizes identifiers or shifts dates: pass a site secret "
            "(--secret FILE; create one with `fedvault data keygen`)"
        )
    check_replace(vault_dir, replace=options.replace)
    check_columns(raw, read_raw_header(raw, options.read), schema.names)
    as_of = options.as_of or schema.as_of or date.today()
    survey = _survey(raw, schema, options, secret, as_of)
    report = survey.report
    if report.rows == 0:
        raise DataError(f"{raw}: no data rows")
    if report.invalid_rows and options.on_invalid is OnInvalid.FAIL:
        raise SchemaError(
            f"{raw}: {report.summary()} — fix the file or the schema, or pass "
            "--on-invalid drop to drop invalid rows"
        )
    check_label_classes(
        survey.labels.counts.values(), target=schema.target.name, source=str(raw)
    )
    valid = report.rows - report.invalid_rows
    small = survey.classes.small(schema.k) if schema.k > 1 else np.array([], np.uint64)
    suppressed = sum(survey.classes.counts[int(k)] for k in small)
    _check_suppression(raw, schema, valid, suppressed, report.invalid_rows)
    manifest, replaced = _write(
        raw,
        schema,
        vault_dir,
        key=key,
        secret=secret,
        options=options,
        small=small,
        survey=survey,
        kdf_salt=kdf_salt,
    )
    return ImportResult(
        manifest=manifest, validation=report.to_dict(), replaced=replaced
    )


def _survey(
    raw: Path, schema: Schema, options: ImportOptions, secret: bytes | None, as_of: date
) -> _Survey:
    survey = _Survey(
        ValidationReport(),
        QualityMeter(schema, as_of=as_of),
        ClassCounter(),
        ClassCounter(),
    )
    quasi = [c.name for c in quasi_columns(schema)]
    target = schema.target.name
    for chunk in iter_chunks(raw, options.read, schema.missing_values):
        checked = check_chunk(chunk, schema)
        survey.report.add(checked)
        survey.meter.add_received(chunk, checked)
        good = checked.typed[checked.row_ok]
        survey.classes.add(class_keys(quasi_frame(good, schema, secret), quasi))
        survey.labels.add(class_keys(good, [target]))
    return survey


def _check_suppression(
    raw: Path, schema: Schema, valid: int, suppressed: int, invalid: int
) -> None:
    if valid and suppressed / valid > schema.max_suppressed_share:
        raise DataError(
            f"{raw}: k-anonymity (k={schema.k}) would suppress {suppressed} of {valid} "
            f"rows ({suppressed / valid:.1%} > max-suppressed-share "
            f"{schema.max_suppressed_share:.1%}); generalize the quasi-identifiers "
            "more (wider bands, shorter prefixes) or raise max-suppressed-share"
        )
    if valid - suppressed <= 0:
        raise DataError(
            f"{raw}: 0 rows left after cleaning ({invalid} invalid, {suppressed} "
            "suppressed by k-anonymity); nothing written"
        )


def _write(
    raw: Path,
    schema: Schema,
    vault_dir: Path,
    *,
    key: bytes,
    secret: bytes | None,
    options: ImportOptions,
    small: np.ndarray[Any, np.dtype[np.uint64]],
    survey: _Survey,
    kdf_salt: bytes | None,
) -> tuple[Manifest, Manifest | None]:
    """Write the vault; returns its manifest and the one it replaced, if any."""
    quasi = [c.name for c in quasi_columns(schema)]
    report, meter = survey.report, survey.meter
    written = 0
    with VaultWriter(
        vault_dir, key, kdf_salt=kdf_salt, replacing=key if options.replace else None
    ) as writer:
        for chunk in iter_chunks(raw, options.read, schema.missing_values):
            checked = check_chunk(chunk, schema)
            frame = anonymize(checked.typed[checked.row_ok], schema, secret)
            frame = frame[suppression_mask(class_keys(frame, quasi), small)]
            if len(frame):
                writer.write_chunk(frame)
                meter.add_stored(frame)
                written += len(frame)
        valid = report.rows - report.invalid_rows
        if written != valid - int(sum(survey.classes.counts[int(k)] for k in small)):
            raise DataError(f"{raw}: the file changed during the import; run it again")
        quality = meter.report(
            invalid=report.invalid_rows, suppressed=valid - written, stored=written
        )
        manifest = writer.commit(
            target=schema.target.name,
            columns=[(c.name, c.role.value) for c in schema.stored],
            schema=schema.to_dict(),
            schema_hash=schema.digest(),
            quality=quality,
            details=_details(raw, schema, report, options),
        )
        return manifest, writer.replaced


def _details(
    raw: Path, schema: Schema, report: ValidationReport, options: ImportOptions
) -> dict[str, Any]:
    return {
        "source": raw.name,
        "on-invalid": options.on_invalid.value,
        "validation": report.to_dict(),
        "anonymization": {
            "k": schema.k,
            "quasi-identifiers": [c.name for c in quasi_columns(schema)],
            "pseudonymized": [c.name for c in schema.columns if c.pseudonymize],
            "generalized": {
                c.name: c.generalize.to_dict()
                for c in schema.columns
                if c.generalize is not None
            },
            "dropped": [c.name for c in schema.columns if not c.stored],
        },
        "identifier-columns": [c.name for c in schema.with_role(Role.IDENTIFIER)],
    }
