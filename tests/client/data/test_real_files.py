"""Files hospitals and banks really export (issue 12, cases 2 and 4 to 8).

Each case reads one file the three ways fedvault reads tables -- ``simulate --data``
(``load_table``), ``data schema infer`` (``infer_schema``) and ``data import``
(``import_raw``) -- and asserts that they agree: the right value, or one clear
error naming the file, the column, the rows and the cause. Personal details are
made up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fedvault.client.data.anonymize import pseudonym
from fedvault.client.data.importer import ImportOptions, import_raw
from fedvault.client.data.infer import infer_schema
from fedvault.client.data.reader import ReadOptions
from fedvault.client.data.schema import ColumnType, Role
from fedvault.client.data.schema_toml import parse_schema
from fedvault.client.data.vault import read_frame
from fedvault.common.data import load_table
from fedvault.common.errors import DataError

KEY = bytes(range(32))
SECRET = bytes(range(100, 132))


def _write(path: Path, lines: list[str], *, bom: bool = False) -> Path:
    text = "\n".join(lines) + "\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def _import(
    raw: Path,
    columns: dict[str, dict[str, Any]],
    tmp_path: Path,
    *,
    chunk_rows: int = 100_000,
) -> pd.DataFrame:
    schema = parse_schema({"dataset": {"name": "t", "k": 1}, "columns": columns})
    vault = tmp_path / "vault"
    import_raw(
        raw,
        schema,
        vault,
        key=KEY,
        secret=SECRET,
        options=ImportOptions(read=ReadOptions(chunk_rows=chunk_rows)),
    )
    return read_frame(vault, KEY, include_pseudonyms=True)


FEATURE = {"type": "float", "role": "feature"}
LABEL = {"type": "int", "role": "target", "required": True}


# --- case 2: identifiers are their raw text ------------------------------------


def test_zero_padded_identifiers_keep_their_own_pseudonym(tmp_path: Path) -> None:
    raw = _write(tmp_path / "ids.csv", ["mrn,x,y", "000042,1.5,0", "42,2.5,1"])
    columns = {
        "mrn": {"type": "int", "role": "identifier", "pseudonymize": True},
        "x": FEATURE,
        "y": LABEL,
    }
    frame = _import(raw, columns, tmp_path)
    assert frame["mrn"].tolist() == [
        pseudonym("000042", SECRET),
        pseudonym("42", SECRET),
    ]


def test_zero_padded_codes_are_drafted_as_ids_and_read_as_text(
    tmp_path: Path,
) -> None:
    rows = [f"{i:06d},{i % 7}.5,{i % 2}" for i in range(1, 61)]
    raw = _write(tmp_path / "codes.csv", ["mrn,x,y", *rows])
    draft = infer_schema(raw).schema
    assert draft.column("mrn").type is ColumnType.ID
    assert load_table(raw)["mrn"].tolist()[:2] == ["000001", "000002"]


# --- case 4: a numeric lab column with a few "<0.30" ----------------------------


def _lab_rows(rows: int, strays: dict[int, str]) -> list[str]:
    lines = ["crp,age,y"]
    for i in range(rows):
        value = strays.get(i, f"{(i * 37) % 500 / 10 + 0.3:.2f}")
        lines.append(f"{value},{20 + i % 60},{i % 2}")
    return lines


@pytest.mark.parametrize("rows", [310, 300_000])
def test_lab_values_below_the_detection_limit(tmp_path: Path, rows: int) -> None:
    strays = {3: "<0.30", rows - 7: "<0.30", rows // 2: "n.d."}
    raw = _write(tmp_path / "lab.csv", _lab_rows(rows, strays))
    with pytest.raises(DataError) as info:
        load_table(raw)
    message = str(info.value)
    assert "\n" not in message
    assert str(raw) in message
    assert "column 'crp' holds numbers but also '<0.30' (row 4)" in message
    assert "'n.d.'" in message and "in 3 cell(s)" in message
    draft = infer_schema(raw)
    assert draft.schema.column("crp").type is ColumnType.FLOAT
    assert any("'<0.30' (row 4)" in note for note in draft.notes["crp"])


def test_lab_strays_are_invalid_rows_at_import(tmp_path: Path) -> None:
    raw = _write(tmp_path / "lab.csv", _lab_rows(310, {3: "<0.30", 40: "<0.30"}))
    columns = {"crp": FEATURE, "age": FEATURE, "y": LABEL}
    with pytest.raises(DataError, match=r"crp: 2 type \(rows 4, 41\)"):
        _import(raw, columns, tmp_path)


def test_a_few_codes_among_numbers_make_a_category_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [f"{1 + i % 12},{i % 2}" for i in range(40)] + ["ICU,1", "ICU,0"]
    raw = _write(tmp_path / "wards.csv", ["ward,y", *rows])
    frame = load_table(raw)
    assert frame["ward"].tolist()[-1] == "ICU" and frame["ward"].iloc[0] == "1"
    assert "column 'ward' is read as text" in caplog.text
    assert "'ICU' (row 41)" in caplog.text
    assert infer_schema(raw).schema.column("ward").type is ColumnType.CATEGORY


# --- case 5: a byte-order mark and quoted headers -------------------------------


def test_bom_and_quoted_headers(tmp_path: Path) -> None:
    lines = [
        '"survived","age","fare"',
        *[f"{i % 2},{30 + i},{7 + i}.25" for i in range(8)],
    ]
    raw = _write(tmp_path / "bom.csv", lines, bom=True)
    assert list(load_table(raw).columns) == ["survived", "age", "fare"]
    draft = infer_schema(raw).schema
    assert draft.names == ("survived", "age", "fare")
    columns = {
        "survived": LABEL,
        "age": {"type": "int", "role": "feature"},
        "fare": FEATURE,
    }
    assert _import(raw, columns, tmp_path)["fare"].iloc[0] == 7.25


# --- case 6: European exports: ";" and decimal commas ---------------------------

EUROPEAN = [
    "glucose;weight;sex;y",
    *[f"{90 + i},{i % 10}5;{60 + i},5;{'FM'[i % 2]};{i % 2}" for i in range(30)],
]


def test_european_export_reads_as_numbers_everywhere(tmp_path: Path) -> None:
    raw = _write(tmp_path / "eu.csv", EUROPEAN)
    frame = load_table(raw)
    assert list(frame.columns) == ["glucose", "weight", "sex", "y"]
    assert frame["glucose"].tolist()[:2] == [90.05, 91.15]
    assert frame["weight"].dtype == "float64"
    for options in (ReadOptions(), ReadOptions(delimiter=";")):
        draft = infer_schema(raw, options=options).schema
        assert draft.column("glucose").type is ColumnType.FLOAT
        assert draft.column("weight").type is ColumnType.FLOAT
        assert draft.column("y").role is Role.TARGET
    columns = {
        "glucose": FEATURE,
        "weight": FEATURE,
        "sex": {"type": "category", "role": "feature"},
        "y": LABEL,
    }
    stored = _import(raw, columns, tmp_path, chunk_rows=7)
    assert stored["glucose"].tolist()[:2] == [90.05, 91.15]
    assert stored["weight"].dtype == "float64"


def test_a_decimal_point_in_a_decimal_comma_column_is_refused(
    tmp_path: Path,
) -> None:
    raw = _write(tmp_path / "eu.csv", [*EUROPEAN, "1.234;70,5;F;1"])
    expected = (
        r"column 'glucose' writes decimals with a comma, but also '1.234' \(row 31\)"
    )
    with pytest.raises(DataError, match=expected):
        load_table(raw)
    with pytest.raises(DataError, match=expected):
        infer_schema(raw, options=ReadOptions(chunk_rows=10))


def test_thousands_in_a_comma_separated_file_are_no_decimals(tmp_path: Path) -> None:
    raw = _write(tmp_path / "us.csv", ["amount,y", '"1,234",0', '"2,500",1'])
    assert load_table(raw)["amount"].tolist() == ["1,234", "2,500"]


# --- case 7: duplicate column names --------------------------------------------


def test_duplicate_column_names_are_refused_by_every_reader(tmp_path: Path) -> None:
    raw = _write(tmp_path / "dup.csv", ["id,age,x,age,y", "1,40,0.5,41,1"])
    expected = r"dup.csv: duplicated column names: 'age' \(columns 2, 4\)"
    with pytest.raises(DataError, match=expected):
        load_table(raw)
    with pytest.raises(DataError, match=expected):
        infer_schema(raw)
    with pytest.raises(DataError, match=expected):
        _import(raw, {"x": FEATURE, "y": LABEL}, tmp_path)


def test_duplicate_column_names_in_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = tmp_path / "dup.parquet"
    pq.write_table(pa.table([[1], [2], [0]], names=["age", "age", "y"]), raw)
    with pytest.raises(DataError, match=r"'age' \(columns 1, 2\)"):
        load_table(raw)


# --- case 8: free text and identifiers are no label -----------------------------

_NAMES = ["Ann Lee", "Bob Ray", "Cy Fox", "Di Yu", "Ed Kim", "Flo Ng", "Gus Oh"]


def _notes_rows(rows: int) -> list[str]:
    lines = ["age,grade,sex,notes"]
    for i in range(rows):
        name = _NAMES[i % len(_NAMES)]
        note = f"{name} called from +44 20 7946 {i:04d} about the visit {i}"
        lines.append(f"{30 + i % 40},{1 + i % 3},{'FM'[i % 2]},{note}")
    return lines


def test_infer_never_proposes_personal_free_text_as_the_target(
    tmp_path: Path,
) -> None:
    raw = _write(tmp_path / "notes.csv", _notes_rows(60))
    draft = infer_schema(raw)
    assert draft.findings["notes"]
    assert draft.schema.column("notes").role is not Role.TARGET
    assert [c.name for c in draft.schema.with_role(Role.TARGET)] == ["grade"]


def test_infer_leaves_the_target_open_when_no_column_fits(tmp_path: Path) -> None:
    rows = [f"{i}.5,{i * 3}.25,Note number {i} about nothing" for i in range(40)]
    raw = _write(tmp_path / "none.csv", ["x,z,comment", *rows])
    draft = infer_schema(raw)
    assert not draft.schema.with_role(Role.TARGET)
    assert 'give one role = "target"' in draft.to_toml("none.csv")


def test_a_target_of_mostly_single_rows_is_refused(tmp_path: Path) -> None:
    raw = _write(tmp_path / "notes.csv", _notes_rows(60))
    columns = {
        "age": {"type": "int", "role": "feature"},
        "grade": {"type": "int", "role": "feature"},
        "sex": {"type": "category", "role": "feature"},
        "notes": {"type": "category", "role": "target", "required": True},
    }
    expected = (
        r"notes.csv: target column 'notes' is no label: 60 of its 60 classes have "
        "a single row"
    )
    with pytest.raises(DataError, match=expected):
        _import(raw, columns, tmp_path)
    assert not (tmp_path / "vault").exists()
