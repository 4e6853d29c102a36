"""Bad input: each case gives one clear line, exit status 2, and an unchanged vault."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedvault.client.data.keys import write_key
from fedvault.client.data_cli import data_app

HEADER = "pid,name,age,sex,admitted,discharge,score,label"
GOOD = "P01,Ann Lee,31,F,2024-06-01,2024-06-03,1.5,yes"
runner = CliRunner()


@pytest.fixture
def site(
    tmp_path: Path, small_vault: Path, key: bytes, secret: bytes
) -> dict[str, Path]:
    """The small vault with its key and secret files, outside the vault."""
    files = tmp_path / "files"
    files.mkdir()
    write_key(files / "site.key", key)
    write_key(files / "site.secret", secret)
    return {
        "vault": small_vault,
        "key": files / "site.key",
        "secret": files / "site.secret",
    }


def _import(
    raw: Path, schema: Path, site: dict[str, Path], *extra: str
) -> tuple[int, str, str]:
    args = [
        "import",
        str(raw),
        "--schema",
        str(schema),
        "--vault",
        str(site["vault"]),
        "--key",
        str(site["key"]),
        "--secret",
        str(site["secret"]),
        "--as-of",
        "2025-01-01",
        "--replace",  # into the existing vault, which must come out unchanged
        *extra,
    ]
    result = runner.invoke(data_app, args)
    return result.exit_code, result.stdout, result.stderr


def _assert_user_error(code: int, stderr: str, fragment: str) -> None:
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]
    assert "Traceback" not in stderr


CSV_CASES = {
    "missing column": (
        "pid,name,age,sex,admitted,discharge,label\n"
        "P01,Ann Lee,31,F,2024-06-01,2024-06-03,yes\n",
        "column 'score' is missing",
    ),
    "extra column": (
        HEADER + ",ward\n" + GOOD + ",B4\n",
        "column 'ward' is not in the schema",
    ),
    "type mismatch": (
        HEADER + "\n" + GOOD + "\n" + GOOD.replace(",31,", ",thirty,") + "\n",
        "age: 1 type (rows 2)",
    ),
    "out of range": (
        HEADER + "\n" + GOOD.replace(",1.5,", ",11.5,") + "\n",
        "score: 1 range (rows 1)",
    ),
    "empty file": ("", "the file is empty"),
    "header only": (HEADER + "\n", "a header but no data rows"),
    "ragged row": (HEADER + "\n" + GOOD + ",extra,cells\n", "malformed CSV"),
    "ragged later row": (
        HEADER + "\n" + GOOD + "\n" + GOOD + "\n" + GOOD + ",x\n",
        "malformed CSV: a row has 9 fields, the header 8",
    ),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_csv(
    case: str,
    site: dict[str, Path],
    small_schema: Path,
    tmp_path: Path,
    snapshot: Callable[[Path], dict[str, bytes]],
) -> None:
    text, fragment = CSV_CASES[case]
    raw = tmp_path / "bad.csv"
    raw.write_text(text, encoding="utf-8")
    before = snapshot(site["vault"])
    code, _, stderr = _import(raw, small_schema, site)
    _assert_user_error(code, stderr, fragment)
    assert snapshot(site["vault"]) == before


def test_a_wrong_delimiter_given_gets_the_hint_and_detection_reads_it(
    site: dict[str, Path], small_schema: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "semicolons.csv"
    rows = [HEADER, GOOD, GOOD.replace("P01", "P02")]
    raw.write_text("\n".join(r.replace(",", ";") for r in rows) + "\n")
    code, _, stderr = _import(raw, small_schema, site, "--delimiter", ",")
    _assert_user_error(code, stderr, "is the file ';'-separated? pass --delimiter ';'")
    code, _, stderr = _import(raw, small_schema, site)
    assert code == 0, stderr


def test_wrong_encoding(
    site: dict[str, Path], small_schema: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "latin.csv"
    rows = [HEADER, GOOD.replace("Ann", "Ana\xefs"), GOOD.replace("P01", "P02")]
    raw.write_bytes("\n".join(rows).encode("latin-1"))
    code, _, stderr = _import(raw, small_schema, site)
    _assert_user_error(code, stderr, "not valid utf-8 text")
    assert "--encoding" in stderr
    code, _, stderr = _import(raw, small_schema, site, "--encoding", "latin-1")
    assert code == 0, stderr


def test_wrong_encoding_further_down(
    site: dict[str, Path], small_schema: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "latin.csv"
    rows = [HEADER, GOOD, GOOD.replace("P01", "P02").replace("Ann", "Ana\xefs")]
    raw.write_bytes("\n".join(rows).encode("latin-1"))
    code, _, stderr = _import(raw, small_schema, site)
    _assert_user_error(code, stderr, "not valid utf-8 text")


def test_zero_rows_after_cleaning(
    site: dict[str, Path],
    small_schema: Path,
    write_csv: Callable[..., Path],
    snapshot: Callable[[Path], dict[str, bytes]],
) -> None:
    raw = write_csv([GOOD.replace(",yes", ",maybe"), GOOD.replace(",F,", ",Q,")])
    before = snapshot(site["vault"])
    code, _, stderr = _import(raw, small_schema, site, "--on-invalid", "drop")
    _assert_user_error(code, stderr, "0 rows left after cleaning (2 invalid")
    assert snapshot(site["vault"]) == before


def test_too_much_suppression(
    site: dict[str, Path],
    small_schema: Path,
    write_csv: Callable[..., Path],
    small_rows: list[str],
) -> None:
    # a lone 50-59 F row among three: k = 2 would suppress 1 of 3 (33%) ...
    raw = write_csv([small_rows[0], small_rows[1], small_rows[8]])
    code, _, stderr = _import(raw, small_schema, site)
    assert code == 0, stderr  # ... which max-suppressed-share 0.5 allows
    raw = write_csv([small_rows[0], small_rows[4], small_rows[8]])  # all alone
    code, _, stderr = _import(raw, small_schema, site)
    _assert_user_error(code, stderr, "k-anonymity (k=2) would suppress 3 of 3 rows")


def test_unknown_role_in_schema(
    site: dict[str, Path],
    small_schema: Path,
    write_csv: Callable[..., Path],
    small_rows: list[str],
) -> None:
    text = small_schema.read_text().replace('role = "feature"', 'role = "feat"')
    small_schema.write_text(text)
    code, _, stderr = _import(write_csv(small_rows), small_schema, site)
    _assert_user_error(code, stderr, "columns.score.role: unknown 'feat'; use one of")


def test_loose_key_permissions(
    site: dict[str, Path],
    small_schema: Path,
    write_csv: Callable[..., Path],
    small_rows: list[str],
) -> None:
    site["key"].chmod(0o644)
    code, _, stderr = _import(write_csv(small_rows), small_schema, site)
    _assert_user_error(code, stderr, "permissions 0644 let other users read it")
    assert "chmod 600" in stderr


def test_key_inside_vault(
    site: dict[str, Path],
    small_schema: Path,
    write_csv: Callable[..., Path],
    small_rows: list[str],
    key: bytes,
) -> None:
    inside = site["vault"] / "site.key"
    write_key(site["key"].parent / "tmp.key", key)
    (site["key"].parent / "tmp.key").rename(inside)
    site["key"] = inside
    code, _, stderr = _import(write_csv(small_rows), small_schema, site)
    _assert_user_error(code, stderr, "lies inside the vault")


def test_missing_secret(
    site: dict[str, Path],
    small_schema: Path,
    write_csv: Callable[..., Path],
    small_rows: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FEDVAULT_DATA_SECRET", raising=False)
    args = [
        "import",
        str(write_csv(small_rows)),
        "--schema",
        str(small_schema),
        "--vault",
        str(site["vault"]),
        "--key",
        str(site["key"]),
    ]
    result = runner.invoke(data_app, args)
    _assert_user_error(result.exit_code, result.stderr, "pass a site secret")


def test_wrong_key_on_inspect(site: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    write_key(other)
    result = runner.invoke(
        data_app, ["inspect", str(site["vault"]), "--key", str(other)]
    )
    _assert_user_error(result.exit_code, result.stderr, "integrity check failed")
    assert result.stdout == ""


def test_no_key_at_all(site: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDVAULT_DATA_KEY", raising=False)
    result = runner.invoke(data_app, ["inspect", str(site["vault"])])
    _assert_user_error(result.exit_code, result.stderr, "no key: pass --key FILE")


def test_inspect_missing_vault(tmp_path: Path, site: dict[str, Path]) -> None:
    result = runner.invoke(
        data_app, ["inspect", str(tmp_path / "nowhere"), "--key", str(site["key"])]
    )
    _assert_user_error(result.exit_code, result.stderr, "no vault at")
