"""Key files, environment keys and passphrase keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fedvault.client.data import keys
from fedvault.common.errors import ConfigError


def test_keygen_writes_0600_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "k"
    key = keys.write_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load_key(path) == key
    with pytest.raises(ConfigError, match="already exists"):
        keys.write_key(path)
    assert keys.load_key(path) == key


def test_fresh_keys_differ(tmp_path: Path) -> None:
    assert keys.write_key(tmp_path / "a") != keys.write_key(tmp_path / "b")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_loose_permissions_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k"
    keys.write_key(path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"permissions {mode:04o}"):
        keys.load_key(path)


def test_key_inside_vault_refused(tmp_path: Path) -> None:
    vault = tmp_path / "vault"
    vault.mkdir()
    with pytest.raises(ConfigError, match="inside the vault"):
        keys.load_key(_key_at(vault / "k"), vault_dir=vault)
    (vault / keys.VAULT_MARKER).write_bytes(b"x")
    nested = vault / "sub"
    nested.mkdir()
    with pytest.raises(ConfigError, match="inside the vault"):
        keys.write_key(nested / "k2")


def _key_at(path: Path) -> Path:
    keys.write_key(path)
    return path


def test_malformed_key_file(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("not hex\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="expected 64 hex characters"):
        keys.load_key(path)
    path.write_text("ab" * 16 + "\n")
    with pytest.raises(ConfigError, match="got 16 bytes"):
        keys.load_key(path)
    with pytest.raises(ConfigError, match="key file not found"):
        keys.load_key(tmp_path / "none")


def test_env_key() -> None:
    key = bytes(range(32))
    assert keys.key_from_env({keys.KEY_ENV: key.hex()}) == key
    assert keys.key_from_env({}) is None
    with pytest.raises(ConfigError, match=keys.KEY_ENV):
        keys.key_from_env({keys.KEY_ENV: "zz"})


def test_passphrase_keys() -> None:
    salt = bytes(16)
    first = keys.key_from_passphrase("correct horse battery", salt)
    assert first == keys.key_from_passphrase("correct horse battery", salt)
    assert first != keys.key_from_passphrase("correct horse battery", bytes([1] * 16))
    assert first != keys.key_from_passphrase("correct horse battery!", salt)
    assert len(first) == 32
    with pytest.raises(ConfigError, match="too short"):
        keys.key_from_passphrase("short", salt)


def test_key_id_is_public_and_stable() -> None:
    key = bytes(range(32))
    assert keys.key_id(key) == keys.key_id(key)
    assert keys.key_id(key) != keys.key_id(bytes(32))
    assert key.hex()[:16] not in keys.key_id(key)


def test_keygen_makes_a_private_folder_for_a_new_key(tmp_path):
    import stat

    from fedvault.client.data.keys import load_key, write_key

    path = tmp_path / "keys" / "vault.key"
    key = write_key(path)
    assert load_key(path) == key
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
