"""Fixtures for the site data pipeline tests: a tiny contract, keys, demo data."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from fedvault.client.data.demo import DemoFiles, write_demo
from fedvault.client.data.importer import ImportOptions, import_raw
from fedvault.client.data.keys import write_key
from fedvault.client.data.reader import ReadOptions
from fedvault.client.data.schema import Schema
from fedvault.client.data.schema_toml import load_schema

AS_OF = date(2025, 1, 1)

SMALL_SCHEMA = textwrap.dedent(
    """
    [dataset]
    name = "small"
    k = 2
    max-suppressed-share = 0.5
    rules = ["discharge >= admitted"]
    as-of = 2025-01-01

    [dataset.freshness]
    column = "admitted"
    max-age-days = 365

    [columns.pid]
    type = "id"
    role = "identifier"
    required = true
    pseudonymize = true

    [columns.name]
    type = "text"
    role = "identifier"

    [columns.age]
    type = "int"
    role = "quasi-identifier"
    required = true
    min = 0
    max = 120
    generalize = { method = "band", width = 10 }

    [columns.sex]
    type = "category"
    role = "quasi-identifier"
    categories = ["F", "M"]

    [columns.admitted]
    type = "date"
    role = "drop"

    [columns.discharge]
    type = "date"
    role = "drop"

    [columns.score]
    type = "float"
    role = "feature"
    min = 0.0
    max = 10.0

    [columns.label]
    type = "category"
    role = "target"
    categories = ["yes", "no"]
    """
)
HEADER = "pid,name,age,sex,admitted,discharge,score,label"
#: Ten rows, all valid: ages 30-39 (F) x4, 40-49 (M) x4, 50-59 (F) x2.
SMALL_ROWS = [
    "P01,Ann Lee,31,F,2024-06-01,2024-06-03,1.5,yes",
    "P02,Bob Ray,35,F,2024-07-01,2024-07-02,2.5,no",
    "P03,Cy Fox,33,F,2024-08-01,2024-08-05,3.0,yes",
    "P04,Di Yu,38,F,2023-01-01,2023-01-02,4.0,no",
    "P05,Ed Kim,41,M,2024-02-01,2024-02-01,5.0,yes",
    "P06,Flo Ng,44,M,2024-03-01,2024-03-09,6.0,no",
    "P07,Gus Oh,47,M,2024-04-01,2024-04-02,7.0,yes",
    "P08,Hal Wu,49,M,2024-05-01,2024-05-02,8.0,no",
    "P09,Ivy Ko,52,F,2024-09-01,2024-09-03,9.0,yes",
    "P10,Jo Pak,55,F,2024-10-01,2024-10-04,9.5,yes",
]


@pytest.fixture
def small_schema(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL_SCHEMA, encoding="utf-8")
    return path


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., Path]:
    def write(rows: list[str], header: str = HEADER, name: str = "raw.csv") -> Path:
        path = tmp_path / name
        path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
        return path

    return write


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "site.key"
    path.parent.mkdir()
    write_key(path)
    return path


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "site.secret"
    write_key(path)
    return path


@pytest.fixture
def key() -> bytes:
    return bytes(range(32))


@pytest.fixture
def secret() -> bytes:
    return bytes(range(100, 132))


@pytest.fixture
def small_vault(
    tmp_path: Path,
    small_schema: Path,
    write_csv: Callable[..., Path],
    key: bytes,
    secret: bytes,
) -> Path:
    """A vault of the ten small rows in 3 chunks (chunk size 4)."""
    vault = tmp_path / "vault"
    import_raw(
        write_csv(SMALL_ROWS),
        load_schema(small_schema),
        vault,
        key=key,
        secret=secret,
        options=ImportOptions(read=ReadOptions(chunk_rows=4), as_of=AS_OF),
    )
    return vault


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> DemoFiles:
    return write_demo(tmp_path_factory.mktemp("demo"), sites=3, seed=7, today=AS_OF)


@pytest.fixture(scope="session")
def demo_schema(demo_files: DemoFiles) -> Schema:
    return load_schema(demo_files.schema)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), and nothing else."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, bytes]]:
    return _snapshot


@pytest.fixture
def siblings() -> Callable[[Path], list[str]]:
    return lambda folder: sorted(p.name for p in folder.parent.iterdir())


@pytest.fixture
def small_rows() -> list[str]:
    return list(SMALL_ROWS)


@pytest.fixture
def as_of() -> date:
    return AS_OF
