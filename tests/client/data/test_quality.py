"""Quality metrics against values computed by hand on a ten-row fixture."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from fedvault.client.data.importer import ImportOptions, OnInvalid, import_raw
from fedvault.client.data.reader import ReadOptions
from fedvault.client.data.schema_toml import load_schema
from fedvault.client.data.vault import read_manifest
from fedvault.common.errors import SchemaError

# Against the small contract (k = 2, score in [0, 10], discharge >= admitted,
# freshness: admitted within 365 days of 2025-01-01, i.e. on or after 2024-01-02):
ROWS = [
    "P01,Ann Lee,31,F,2024-06-01,2024-06-03,1.5,yes",  # valid
    "P02,,35,F,2024-07-01,2024-07-02,2.5,no",  # name missing (optional): valid
    "P03,Cy Fox,33,F,2024-08-01,2024-07-30,3.0,yes",  # breaks the rule: invalid
    "P04,Di Yu,38,F,2023-01-01,2023-01-02,,no",  # score missing; stale: valid
    "P05,Ed Kim,41,M,2024-02-01,2024-02-01,5.0,yes",  # valid
    "P06,Flo Ng,44,M,2024-03-01,2024-03-09,60.0,no",  # score out of range: invalid
    "P07,Gus Oh,abc,M,2024-04-01,2024-04-02,7.0,yes",  # age not a number: invalid
    "P05,Ed Kim,41,M,2024-02-01,2024-02-01,5.0,yes",  # duplicate of row 5: valid
    "P09,Ivy Ko,52,X,2024-09-01,2024-09-03,9.0,yes",  # sex not a category: invalid
    "P10,Jo Pak,55,F,2024-10-01,2024-10-04,9.5,maybe",  # label unknown: invalid
]


@pytest.fixture
def report(
    tmp_path: Path, small_schema: Path, write_csv: Callable[..., Path]
) -> dict[str, Any]:
    vault = tmp_path / "q"
    key = bytes(32)
    result = import_raw(
        write_csv(ROWS),
        load_schema(small_schema),
        vault,
        key=key,
        secret=b"s" * 32,
        options=ImportOptions(
            on_invalid=OnInvalid.DROP,
            read=ReadOptions(chunk_rows=3),
            as_of=date(2025, 1, 1),
        ),
    )
    assert result.validation["invalid-rows"] == 5
    return read_manifest(vault, key).quality


def test_row_counts(report: dict[str, Any]) -> None:
    assert report["rows-received"] == 10
    assert report["rows-invalid"] == 5
    # valid rows 1, 2, 4 -> (30-39, F) x3; rows 5, 8 -> (40-49, M) x2; k = 2
    assert report["rows-suppressed"] == 0
    assert report["rows-stored"] == 5
    assert report["availability"] == pytest.approx(5 / 10)


def test_completeness(report: dict[str, Any]) -> None:
    # 8 columns x 10 rows = 80 cells; missing: row 2 name, row 4 score
    assert report["completeness"]["overall"] == pytest.approx(78 / 80)
    columns = report["completeness"]["columns"]
    assert columns["name"] == pytest.approx(0.9)
    assert columns["score"] == pytest.approx(0.9)
    assert columns["age"] == 1.0 and columns["label"] == 1.0


def test_validity(report: dict[str, Any]) -> None:
    columns = report["validity"]["columns"]
    assert columns["age"] == pytest.approx(9 / 10)  # "abc"
    assert columns["sex"] == pytest.approx(9 / 10)  # "X"
    assert columns["score"] == pytest.approx(8 / 9)  # 60.0 of 9 present
    assert columns["label"] == pytest.approx(9 / 10)  # "maybe"
    assert columns["name"] == 1.0 and columns["discharge"] == 1.0
    # valid cells 10+9+9+9+10+10+8+9 = 74 of 78 present
    assert report["validity"]["overall"] == pytest.approx(74 / 78)


def test_consistency_and_duplicates(report: dict[str, Any]) -> None:
    consistency = report["consistency"]
    assert consistency["rows-breaking-rules"] == 1  # row 3
    assert consistency["rules-passed"] == pytest.approx(9 / 10)
    assert consistency["duplicate-rows"] == 1  # row 8 = row 5
    assert consistency["duplicate-rate"] == pytest.approx(1 / 10)


def test_timeliness(report: dict[str, Any]) -> None:
    timeliness = report["timeliness"]
    assert timeliness["rows-dated"] == 10
    assert timeliness["rows-timely"] == 9  # row 4 was admitted 2023-01-01
    assert timeliness["share"] == pytest.approx(0.9)
    assert timeliness["as-of"] == "2025-01-01"


def test_class_balance_and_summary(report: dict[str, Any]) -> None:
    # stored rows 1, 2, 4, 5, 8: labels yes, no, no, yes, yes
    balance = report["class-balance"]
    assert balance["yes"] == {"count": 3, "share": pytest.approx(0.6)}
    assert balance["no"] == {"count": 2, "share": pytest.approx(0.4)}
    score = report["columns"]["score"]  # 1.5, 2.5, missing, 5.0, 5.0
    assert score["count"] == 4 and score["missing"] == 1
    assert score["min"] == 1.5 and score["max"] == 5.0
    assert score["mean"] == pytest.approx(3.5)
    assert score["std"] == pytest.approx(math.sqrt(9.5 / 3))
    assert report["columns"]["age"]["top"] == {"30-39": 3, "40-49": 2}


def test_default_refuses_invalid_rows_with_a_report(
    tmp_path: Path, small_schema: Path, write_csv: Callable[..., Path]
) -> None:
    with pytest.raises(SchemaError) as caught:
        import_raw(
            write_csv(ROWS),
            load_schema(small_schema),
            tmp_path / "q",
            key=bytes(32),
            secret=b"s" * 32,
        )
    message = str(caught.value)
    assert "5 of 10 rows invalid" in message
    assert "age: 1 type (rows 7)" in message
    assert "--on-invalid drop" in message
    assert "\n" not in message
    assert not (tmp_path / "q").exists()
