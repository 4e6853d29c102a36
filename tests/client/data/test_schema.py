"""Schema contracts: strict parsing with errors that name the key, and round trips."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedvault.client.data.schema import ColumnType, Method, Role
from fedvault.client.data.schema_toml import load_schema, parse_schema
from fedvault.client.data.schema_writer import schema_to_toml
from fedvault.common.errors import ConfigError


def _base() -> dict[str, Any]:
    return {
        "dataset": {"name": "t"},
        "columns": {
            "x": {"type": "float", "role": "feature"},
            "y": {"type": "int", "role": "target"},
        },
    }


def test_small_schema_parses(small_schema: Path) -> None:
    schema = load_schema(small_schema)
    assert schema.k == 2
    assert schema.target.name == "label" and schema.target.required
    generalization = schema.column("age").generalize
    assert generalization is not None and generalization.method is Method.BAND
    assert schema.column("admitted").type is ColumnType.DATE
    assert [c.name for c in schema.stored] == ["pid", "age", "sex", "score", "label"]
    assert schema.rules[0].text == "discharge >= admitted"
    assert schema.freshness is not None and schema.freshness.max_age_days == 365


def test_round_trip_through_toml(small_schema: Path) -> None:
    schema = load_schema(small_schema)
    text = schema_to_toml(schema, header=["a comment"], notes={"age": ["why"]})
    again = parse_schema(tomllib.loads(text))
    assert again == schema
    assert again.digest() == schema.digest()
    assert "# why" in text


def test_digest_changes_with_the_contract() -> None:
    base = parse_schema(_base())
    changed = _base()
    changed["columns"]["x"]["max"] = 5
    assert parse_schema(changed).digest() != base.digest()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("columns", "x", "role", "features"), "columns.x.role: unknown 'features'"),
        (("columns", "x", "type", "decimal"), "columns.x.type: unknown 'decimal'"),
        (("columns", "x", "colour", "red"), "columns.x.colour: unknown key"),
        (("columns", "x", "categories", ["a"]), "only category columns"),
        (("columns", "x", "pseudonymize", True), "only identifier columns"),
        (
            ("columns", "x", "generalize", {"method": "band", "width": 5}),
            "only quasi-identifier columns",
        ),
        (("columns", "y", "type", "text"), "target must be an int, float or category"),
        (("columns", "y", "required", False), "always required"),
        (("columns", "x", "min", "low"), "columns.x.min: expected a number"),
        (("columns", "x", "pattern", "(["), "not a valid regex"),
        (("dataset", "k", 0), "dataset.k: must be >= 1"),
        (("dataset", "rules", ["x >> y"]), "cannot read 'x >> y'"),
        (("dataset", "rules", ["x >= z"]), "names unknown column 'z'"),
        (
            ("dataset", "freshness", {"column": "x", "max-age-days": 3}),
            "is not a date column",
        ),
        (("dataset", "shade", 1), "dataset.shade: unknown key"),
    ],
)
def test_bad_contracts_name_the_key(edit: tuple[Any, ...], message: str) -> None:
    data = _base()
    *path, key, value = edit
    table = data
    for part in path:
        table = table[part]
    table[key] = value
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")
    ):
        parse_schema(data, source="s.toml")


def test_generalization_must_fit_the_type() -> None:
    data = _base()
    data["columns"]["q"] = {
        "type": "category",
        "role": "quasi-identifier",
        "generalize": {"method": "band", "width": 10},
    }
    with pytest.raises(ConfigError, match="method 'band' does not fit category"):
        parse_schema(data)
    data["columns"]["q"]["generalize"] = {"method": "prefix"}
    with pytest.raises(ConfigError, match="length: required"):
        parse_schema(data)


def test_shift_needs_an_identifier() -> None:
    data = _base()
    data["columns"]["d"] = {
        "type": "date",
        "role": "quasi-identifier",
        "generalize": {"method": "shift", "max-days": 10},
    }
    with pytest.raises(ConfigError, match="shift needs an identifier column"):
        parse_schema(data)
    data["columns"]["p"] = {"type": "id", "role": "identifier"}
    assert parse_schema(data).column("d").generalize is not None


def test_exactly_one_target() -> None:
    data = _base()
    data["columns"]["y"]["role"] = "feature"
    with pytest.raises(ConfigError, match="exactly one column"):
        parse_schema(data)


def test_text_is_dropped_unless_kept() -> None:
    data = _base()
    data["columns"]["t"] = {"type": "text", "role": "feature"}
    assert "t" not in [c.name for c in parse_schema(data).stored]
    data["columns"]["t"]["keep"] = True
    assert parse_schema(data).column("t").stored
    assert parse_schema(data).column("t").role is Role.FEATURE


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="schema file not found"):
        load_schema(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[columns\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_schema(bad)
