"""``fedvault data`` end to end through its Typer app: demo, keys, import, read."""

from __future__ import annotations

import json
import tomllib
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedvault.client.data.demo import DemoFiles, write_demo
from fedvault.client.data.keys import write_key
from fedvault.client.data.schema_toml import parse_schema
from fedvault.client.data.vault import read_frame
from fedvault.client.data_cli import data_app

runner = CliRunner()


def _ok(*args: str, env: dict[str, str] | None = None) -> str:
    result = runner.invoke(data_app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def _error(*args: str, env: dict[str, str] | None = None) -> str:
    result = runner.invoke(data_app, list(args), env=env)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_demo_command(tmp_path: Path) -> None:
    out = _ok("demo", "--out", str(tmp_path / "d"), "--sites", "2")
    assert "label column: diagnosis" in out
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "schema.toml",
        "site-1.csv",
        "site-2.csv",
    ]
    assert "already exists" in _error("demo", "--out", str(tmp_path / "d"))


def test_key_file_flow(demo_files: DemoFiles, tmp_path: Path) -> None:
    key, new_key, secret = (str(tmp_path / n) for n in ("a.key", "b.key", "s.key"))
    for path in (key, new_key, secret):
        assert "mode 0600" in _ok("keygen", path)
    assert "already exists" in _error("keygen", key)
    vault = str(tmp_path / "vaults" / "site-1")
    raw = str(demo_files.sites[0])
    schema = str(demo_files.schema)
    out = _ok(
        "import",
        raw,
        "--schema",
        schema,
        "--vault",
        vault,
        "--key",
        key,
        "--secret",
        secret,
        "--as-of",
        "2025-01-01",
    )
    assert "rows stored" in out and "availability" in out
    text = _ok("inspect", vault, "--key", key)
    assert "diagnosis" in text and "completeness" in text
    names = pd.read_csv(raw, dtype=str)["name"].tolist()
    assert not [n for n in names if n in text]
    report = json.loads(_ok("inspect", vault, "--key", key, "--format", "json"))
    assert report["target"] == "diagnosis"
    assert report["quality"]["rows_received"] == len(names)
    assert report["quality"]["timeliness"]["as_of"] == "2025-01-01"
    _ok("rotate-key", vault, "--key", key, "--new-key", new_key)
    assert "integrity check failed" in _error("inspect", vault, "--key", key)
    rotated = json.loads(_ok("inspect", vault, "--key", new_key, "--format", "json"))
    assert rotated["dataset_id"] == report["dataset_id"]
    assert rotated["key_id"] != report["key_id"]


def test_passphrase_flow(demo_files: DemoFiles, tmp_path: Path) -> None:
    vault = tmp_path / "pv"
    env = {
        "FEDVAULT_DATA_PASSPHRASE": "a long enough passphrase",
        "FEDVAULT_DATA_SECRET": bytes(range(32)).hex(),
    }
    out = _ok(
        "import",
        str(demo_files.sites[1]),
        "--schema",
        str(demo_files.schema),
        "--vault",
        str(vault),
        "--passphrase",
        "--format",
        "json",
        env=env,
    )
    manifest = json.loads(out)
    assert manifest["rows"] > 150
    again = json.loads(
        _ok("inspect", str(vault), "--passphrase", "--format", "json", env=env)
    )
    assert again["dataset_id"] == manifest["dataset_id"]
    wrong = {**env, "FEDVAULT_DATA_PASSPHRASE": "another long passphrase"}
    assert "integrity check failed" in _error(
        "inspect", str(vault), "--passphrase", env=wrong
    )
    prompted = runner.invoke(
        data_app,
        ["inspect", str(vault), "--passphrase"],
        input="a long enough passphrase\n",
        env={"FEDVAULT_DATA_PASSPHRASE": ""},
    )
    assert prompted.exit_code == 0, prompted.output


def test_env_key_flow(demo_files: DemoFiles, tmp_path: Path) -> None:
    key = bytes(range(1, 33))
    env = {"FEDVAULT_DATA_KEY": key.hex(), "FEDVAULT_DATA_SECRET": bytes(32).hex()}
    vault = tmp_path / "ev"
    _ok(
        "import",
        str(demo_files.sites[2]),
        "--schema",
        str(demo_files.schema),
        "--vault",
        str(vault),
        env=env,
    )
    frame = read_frame(vault, key)
    assert frame["diagnosis"].isin(["malignant", "benign"]).all()


def test_schema_infer(demo_files: DemoFiles, tmp_path: Path) -> None:
    result = runner.invoke(data_app, ["schema", "infer", str(demo_files.sites[0])])
    assert result.exit_code == 0, result.output
    draft = parse_schema(tomllib.loads(result.stdout))
    roles = {c.name: c.role.value for c in draft.columns}
    for name in ("patient_id", "name", "national_id", "phone", "email", "address"):
        assert roles[name] == "identifier", name
    assert roles["notes"] == "drop"
    assert roles["age"] == roles["sex"] == roles["birth_date"] == "quasi-identifier"
    assert roles["diagnosis"] == "target"
    assert roles["mean_radius"] == "feature"
    assert "personal data? email" in result.stderr
    out = tmp_path / "draft.toml"
    assert "wrote draft schema" in _ok(
        "schema", "infer", str(demo_files.sites[0]), "-o", str(out)
    )
    assert parse_schema(tomllib.loads(out.read_text())) == draft
    assert "already exists" in _error(
        "schema", "infer", str(demo_files.sites[0]), "-o", str(out)
    )


def test_demo_is_reproducible_and_complete(tmp_path: Path) -> None:
    today = date(2025, 1, 1)
    first = write_demo(tmp_path / "a", sites=3, seed=3, today=today)
    second = write_demo(tmp_path / "b", sites=3, seed=3, today=today)
    frames = [pd.read_csv(p) for p in first.sites]
    assert sum(len(f) for f in frames) == 569
    for a, b in zip(first.sites, second.sites, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert set(frames[0]["diagnosis"]) == {"malignant", "benign"}
    assert frames[0]["patient_id"].is_unique
    assert first.schema.read_bytes() == second.schema.read_bytes()


@pytest.mark.parametrize("sites", ["0", "51"])
def test_demo_site_count_checked(tmp_path: Path, sites: str) -> None:
    assert "sites: must be between 1 and 50" in _error(
        "demo", "--out", str(tmp_path), "--sites", sites
    )


def test_inspect_authenticates_every_chunk(
    small_vault: Path, key: bytes, tmp_path: Path
) -> None:
    """A flipped byte in a chunk (the manifest intact) fails inspect, naming it."""
    key_file = tmp_path / "keys" / "vault.key"
    write_key(key_file, key)
    assert "rows" in _ok("inspect", str(small_vault), "--key", str(key_file))
    chunk = sorted(small_vault.glob("*/*.fvc"))[1]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    line = _error("inspect", str(small_vault), "--key", str(key_file))
    assert f"chunk 2 of 3 ({chunk.parent.name}/{chunk.name}) is missing" in line
