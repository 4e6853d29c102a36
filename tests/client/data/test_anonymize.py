"""Anonymization: pseudonyms, generalization, k-anonymity, no identifier left."""

from __future__ import annotations

import json
import tempfile
from datetime import date
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fedvault.client.data import vault_format as fmt
from fedvault.client.data.anonymize import (
    ClassCounter,
    class_keys,
    generalize,
    pseudonym,
    pseudonymize,
    suppression_mask,
)
from fedvault.client.data.demo import DemoFiles
from fedvault.client.data.importer import ImportOptions, OnInvalid, import_raw
from fedvault.client.data.keys import key_id
from fedvault.client.data.schema import (
    Column,
    ColumnType,
    Generalization,
    Method,
    Role,
    Schema,
)
from fedvault.client.data.schema_toml import parse_schema
from fedvault.client.data.vault import read_frame, read_manifest
from fedvault.common.errors import DataError

SECRET_A = b"a" * 32
SECRET_B = b"b" * 32


def test_pseudonyms_stable_under_one_secret_and_differ_under_another() -> None:
    values = pd.Series(["P01", "P02", None, "P01"])
    first = pseudonymize(values, SECRET_A)
    again = pseudonymize(values, SECRET_A)
    other = pseudonymize(values, SECRET_B)
    assert first.equals(again)
    assert first[0] == first[3] != first[1]
    assert pd.isna(first[2])
    assert all(a != b for a, b in zip(first.dropna(), other.dropna(), strict=True))
    assert len(first[0]) == 32 and "P01" not in first[0]


def test_pseudonym_known_answer() -> None:
    # HMAC-SHA256(b"a"*32, b"fedvault pseudonym v1\0P01"), first 128 bits
    import hashlib
    import hmac

    expected = hmac.new(
        SECRET_A, b"fedvault pseudonym v1\x00P01", hashlib.sha256
    ).hexdigest()[:32]
    assert pseudonym("P01", SECRET_A) == expected


def _column(ctype: ColumnType, method: Method, **options: object) -> Column:
    return Column(
        name="c",
        type=ctype,
        role=Role.QUASI_IDENTIFIER,
        generalize=Generalization(method=method, **options),  # type: ignore[arg-type]
    )


def test_generalization_rules() -> None:
    ages = pd.Series([0.0, 9.0, 10.0, 47.0, None])
    bands = generalize(ages, _column(ColumnType.INT, Method.BAND, width=10.0))
    assert bands.tolist()[:4] == ["0-9", "0-9", "10-19", "40-49"]
    assert pd.isna(bands[4])
    floats = generalize(
        pd.Series([0.25, 1.5]), _column(ColumnType.FLOAT, Method.BAND, width=0.5)
    )
    assert floats.tolist() == ["[0, 0.5)", "[1.5, 2)"]
    codes = generalize(
        pd.Series(["SW1A 1AA", "EC2"]), _column(ColumnType.ID, Method.PREFIX, length=3)
    )
    assert codes.tolist() == ["SW1", "EC2"]
    dates = pd.Series(pd.to_datetime(["2024-03-17", "2023-12-01"]))
    months = generalize(dates, _column(ColumnType.DATE, Method.MONTH))
    years = generalize(dates, _column(ColumnType.DATE, Method.YEAR))
    assert months.tolist() == ["2024-03", "2023-12"]
    assert years.tolist() == ["2024", "2023"]


def test_date_shift_is_per_person_and_keeps_intervals(tmp_path: Path) -> None:
    schema = parse_schema(
        {
            "dataset": {"k": 1},
            "columns": {
                "pid": {"type": "id", "role": "identifier"},
                "admitted": {
                    "type": "date",
                    "role": "quasi-identifier",
                    "generalize": {"method": "shift", "max-days": 30},
                },
                "left": {
                    "type": "date",
                    "role": "quasi-identifier",
                    "generalize": {"method": "shift", "max-days": 30},
                },
                "y": {"type": "int", "role": "target"},
            },
        }
    )
    raw = tmp_path / "dates.csv"
    raw.write_text(
        "pid,admitted,left,y\nA,2024-01-10,2024-01-15,1\nA,2024-05-01,2024-05-02,0\n"
        "B,2024-01-10,2024-01-15,1\n",
        encoding="utf-8",
    )
    key = bytes(32)
    import_raw(raw, schema, tmp_path / "v", key=key, secret=SECRET_A)
    frame = read_frame(tmp_path / "v", key)
    shift = frame["admitted"] - pd.to_datetime(
        ["2024-01-10", "2024-05-01", "2024-01-10"]
    )
    assert shift[0] == shift[1]  # one offset per person
    assert abs(shift[0].days) <= 30 and abs(shift[2].days) <= 30
    assert (frame["left"] - frame["admitted"]).dt.days.tolist() == [5, 1, 5]


def enforce_k_anonymity(
    frame: pd.DataFrame, quasi: list[str], k: int
) -> tuple[pd.DataFrame, int]:
    """Drop the rows of classes below k from one frame (the importer's k-anonymity
    pieces on one in-memory frame); returns (kept, dropped)."""
    keys = class_keys(frame, quasi)
    counter = ClassCounter()
    counter.add(keys)
    keep = suppression_mask(keys, counter.small(k))
    return frame[keep].reset_index(drop=True), int((~keep).sum())


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 99), st.sampled_from(["F", "M", None]), st.integers(0, 3)
        ),
        min_size=1,
        max_size=60,
    ),
    k=st.integers(1, 6),
)
def test_k_anonymity_in_memory(rows: list[tuple[int, str | None, int]], k: int) -> None:
    frame = pd.DataFrame(rows, columns=["age", "sex", "zone"])
    kept, dropped = enforce_k_anonymity(frame, ["age", "sex", "zone"], k)
    assert len(kept) + dropped == len(frame)
    if len(kept):
        sizes = kept.groupby(["age", "sex", "zone"], dropna=False).size()
        assert sizes.min() >= k
    # nothing is suppressed needlessly: every dropped class was below k
    full = frame.groupby(["age", "sex", "zone"], dropna=False).size()
    assert dropped == int(full[full < k].sum())


_QI_SCHEMA = {
    "dataset": {"k": 3, "max-suppressed-share": 1.0},
    "columns": {
        "pid": {"type": "id", "role": "identifier", "pseudonymize": True},
        "age": {
            "type": "int",
            "role": "quasi-identifier",
            "generalize": {"method": "band", "width": 20},
        },
        "zip": {
            "type": "id",
            "role": "quasi-identifier",
            "generalize": {"method": "prefix", "length": 1},
        },
        "x": {"type": "float", "role": "feature"},
        "y": {"type": "int", "role": "target"},
    },
}


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 99),
            st.sampled_from(["10115", "20095", "80331", "", "1"]),
            st.floats(0, 1),
        ),
        min_size=1,
        max_size=40,
    ),
    chunk_rows=st.integers(1, 15),
)
@example(rows=[(30, "10115", 0.5)] * 4 + [(90, "2", 0.1)], chunk_rows=2)
def test_every_stored_quasi_identifier_class_has_k_rows(
    rows: list[tuple[int, str, float]], chunk_rows: int
) -> None:
    from fedvault.client.data.reader import ReadOptions

    schema = parse_schema(_QI_SCHEMA)
    key = bytes(32)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.csv"
        lines = [f"P{i},{a},{z},{x},{i % 2}" for i, (a, z, x) in enumerate(rows)]
        raw.write_text("pid,age,zip,x,y\n" + "\n".join(lines) + "\n", encoding="utf-8")
        options = ImportOptions(read=ReadOptions(chunk_rows=chunk_rows))
        try:
            import_raw(
                raw, schema, Path(tmp) / "v", key=key, secret=SECRET_A, options=options
            )
        except DataError as exc:  # every class below k: nothing may be written
            assert "0 rows left" in str(exc)
            assert not (Path(tmp) / "v").exists()
            return
        frame = read_frame(Path(tmp) / "v", key)
        sizes = frame.groupby(["age", "zip"], dropna=False).size()
        assert sizes.min() >= 3
        quality = read_manifest(Path(tmp) / "v", key).quality
        assert quality["rows-stored"] + quality["rows-suppressed"] == len(rows)


def _identifier_values(demo_files: DemoFiles, schema: Schema) -> set[str]:
    ids = [c.name for c in schema.with_role(Role.IDENTIFIER)]
    values: set[str] = set()
    for path in demo_files.sites:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
        for name in [*ids, "notes", "postcode"]:
            values |= {v for v in raw[name] if v}
    return values


def test_no_identifier_value_survives_import(
    demo_files: DemoFiles, demo_schema: Schema, tmp_path: Path
) -> None:
    key = bytes(range(32))
    identifiers = _identifier_values(demo_files, demo_schema)
    assert len(identifiers) > 1000  # names, ids, phones, emails, addresses, notes
    long_values = [v for v in identifiers if len(v) >= 6]
    for i, raw in enumerate(demo_files.sites):
        vault = tmp_path / f"v{i}"
        import_raw(
            raw,
            demo_schema,
            vault,
            key=key,
            secret=SECRET_A,
            options=ImportOptions(on_invalid=OnInvalid.FAIL, as_of=date(2025, 1, 1)),
        )
        frame = read_frame(vault, key, include_pseudonyms=True)
        cells = {str(v) for v in frame.to_numpy().ravel()}
        assert not cells & identifiers
        text = " ".join(cells)
        assert not [v for v in long_values if v in text]
        manifest = json.dumps(read_manifest(vault, key).to_dict())
        assert not [v for v in long_values if v in manifest]
        assert "patient_id" in frame.columns  # pseudonyms, on request only
        assert "patient_id" not in read_frame(vault, key).columns


def test_read_frame_columns_are_training_columns(
    demo_files: DemoFiles, demo_schema: Schema, tmp_path: Path
) -> None:
    key = bytes(range(32))
    import_raw(
        demo_files.sites[0], demo_schema, tmp_path / "v", key=key, secret=SECRET_A
    )
    frame = read_frame(tmp_path / "v", key)
    manifest = read_manifest(tmp_path / "v", key)
    assert manifest.target == "diagnosis"
    assert frame.columns[0:2].tolist() == ["age", "sex"]
    assert frame.columns[-1] == "diagnosis"
    assert len(frame.columns) == 2 + 30 + 1
    assert set(frame["diagnosis"]) == {"malignant", "benign"}
    assert manifest.key_id == key_id(key)
    assert fmt.MANIFEST_NAME in {p.name for p in (tmp_path / "v").iterdir()}
