"""Atomic writes and key rotation: a failed write leaves the old vault as it was."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from fedvault.client.data import vault_writer
from fedvault.client.data.importer import ImportOptions, ImportResult, import_raw
from fedvault.client.data.reader import ReadOptions
from fedvault.client.data.schema_toml import load_schema
from fedvault.client.data.vault import read_frame, read_manifest, rotate_key
from fedvault.common.errors import ConfigError, IntegrityError

AS_OF = date(2025, 1, 1)


class InjectedError(RuntimeError):
    pass


def _reimport(
    small_schema: Path, raw: Path, vault: Path, key: bytes, secret: bytes
) -> ImportResult:
    return import_raw(
        raw,
        load_schema(small_schema),
        vault,
        key=key,
        secret=secret,
        options=ImportOptions(
            read=ReadOptions(chunk_rows=3), as_of=AS_OF, replace=True
        ),
    )


def _fail_on_call(n: int, original: Callable[..., Any]) -> Callable[..., Any]:
    calls = {"n": 0}

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise InjectedError("injected")
        return original(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize(
    ("target", "call"),
    [
        ("write_plaintext", 2),  # mid-way through the chunks
        ("fsync_dir", 1),  # after all chunks, before the generation moves in
        ("_write_synced", 4),  # the pending manifest, after the generation moved in
        ("replace", 1),  # the commit itself
    ],
)
def test_failure_mid_write_leaves_old_vault_byte_identical(
    small_vault: Path,
    small_schema: Path,
    write_csv: Callable[..., Path],
    key: bytes,
    secret: bytes,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    call: int,
    small_rows: list[str],
    snapshot: Callable[[Path], dict[str, bytes]],
    siblings: Callable[[Path], list[str]],
) -> None:
    raw = write_csv(small_rows[:9], name="new.csv")
    before, around = snapshot(small_vault), siblings(small_vault)
    frame_before = read_frame(small_vault, key)
    if target == "write_plaintext":
        original = vault_writer.VaultWriter.write_plaintext
        monkeypatch.setattr(
            vault_writer.VaultWriter, target, _fail_on_call(call, original)
        )
    elif target == "replace":
        monkeypatch.setattr(os, "replace", _fail_on_call(call, os.replace))
    else:
        original = getattr(vault_writer, target)
        monkeypatch.setattr(vault_writer, target, _fail_on_call(call, original))
    with pytest.raises(InjectedError):
        _reimport(small_schema, raw, small_vault, key, secret)
    assert snapshot(small_vault) == before
    assert siblings(small_vault) == around  # no temporary folder left behind
    assert read_frame(small_vault, key).equals(frame_before)


def test_failed_first_import_leaves_nothing(
    tmp_path: Path,
    small_schema: Path,
    write_csv: Callable[..., Path],
    key: bytes,
    secret: bytes,
    monkeypatch: pytest.MonkeyPatch,
    small_rows: list[str],
) -> None:
    vault = tmp_path / "fresh"
    raw = write_csv(small_rows)
    around = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.setattr(os, "replace", _fail_on_call(1, os.replace))
    with pytest.raises(InjectedError):
        _reimport(small_schema, raw, vault, key, secret)
    assert not vault.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == around


def test_successful_reimport_replaces_and_sweeps(
    small_vault: Path,
    small_schema: Path,
    write_csv: Callable[..., Path],
    key: bytes,
    secret: bytes,
    small_rows: list[str],
) -> None:
    old = read_manifest(small_vault, key)
    raw = write_csv(small_rows[:8], name="new.csv")
    _reimport(small_schema, raw, small_vault, key, secret)
    new = read_manifest(small_vault, key)
    assert new.dataset_id != old.dataset_id
    assert new.rows == 8
    generations = [p.name for p in small_vault.iterdir() if p.is_dir()]
    assert generations == [new.generation]
    assert not (small_vault / old.generation).exists()


def test_refuses_non_vault_folder(
    tmp_path: Path,
    small_schema: Path,
    write_csv: Callable[..., Path],
    key: bytes,
    secret: bytes,
    small_rows: list[str],
) -> None:
    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        _reimport(small_schema, write_csv(small_rows), folder, key, secret)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_rotate_key(small_vault: Path, key: bytes) -> None:
    frame = read_frame(small_vault, key)
    old = read_manifest(small_vault, key)
    new_key = bytes(range(50, 82))
    manifest = rotate_key(small_vault, key, new_key)
    assert manifest.dataset_id == old.dataset_id
    assert manifest.key_id != old.key_id
    assert manifest.details["key-rotated-from"] == old.key_id
    assert read_frame(small_vault, new_key).equals(frame)
    with pytest.raises(IntegrityError):
        read_frame(small_vault, key)


def test_rotate_key_failure_keeps_old_key_working(
    small_vault: Path,
    key: bytes,
    monkeypatch: pytest.MonkeyPatch,
    snapshot: Callable[[Path], dict[str, bytes]],
) -> None:
    before = snapshot(small_vault)
    original = vault_writer.VaultWriter.write_plaintext
    monkeypatch.setattr(
        vault_writer.VaultWriter, "write_plaintext", _fail_on_call(3, original)
    )
    with pytest.raises(InjectedError):
        rotate_key(small_vault, key, bytes(range(50, 82)))
    assert snapshot(small_vault) == before
    assert len(read_frame(small_vault, key)) == 10


def test_import_into_a_vault_that_holds_data_needs_replace(
    small_vault: Path,
    small_schema: Path,
    write_csv: Callable[..., Path],
    key: bytes,
    secret: bytes,
    small_rows: list[str],
) -> None:
    before = read_manifest(small_vault, key)
    raw = write_csv(small_rows[:8], name="new.csv")
    plain = ImportOptions(read=ReadOptions(chunk_rows=3), as_of=AS_OF)
    with pytest.raises(ConfigError, match="already holds a dataset; pass --replace"):
        import_raw(
            raw,
            load_schema(small_schema),
            small_vault,
            key=key,
            secret=secret,
            options=plain,
        )
    with pytest.raises(ConfigError, match="does not open the dataset it holds"):
        import_raw(
            raw,
            load_schema(small_schema),
            small_vault,
            key=bytes(32),
            secret=secret,
            options=ImportOptions(replace=True, as_of=AS_OF),
        )
    assert read_manifest(small_vault, key) == before
    result = _reimport(small_schema, raw, small_vault, key, secret)
    assert result.replaced == before and result.manifest.rows == 8


def test_a_second_writer_is_refused_while_one_writes(
    small_vault: Path,
    small_schema: Path,
    write_csv: Callable[..., Path],
    key: bytes,
    secret: bytes,
    small_rows: list[str],
) -> None:
    raw = write_csv(small_rows[:8], name="new.csv")
    with vault_writer.VaultWriter(small_vault, key, replacing=key) as first:
        first.write_plaintext(b"not read", 1)
        with pytest.raises(ConfigError, match=f"writing it \\(pid {os.getpid()}\\)"):
            _reimport(small_schema, raw, small_vault, key, secret)
        with pytest.raises(ConfigError, match="another import or key rotation"):
            rotate_key(small_vault, key, bytes(range(32)))
    # the first writer gave up without committing: the vault is as it was, whole
    assert len(read_frame(small_vault, key)) == 10
    assert not vault_writer.lock_path(small_vault).exists()
