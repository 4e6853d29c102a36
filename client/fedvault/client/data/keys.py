"""Vault keys and pseudonym secrets: 256-bit random values kept outside the vault.

A key file holds 64 hexadecimal characters (32 random bytes) and a newline; it is
created with mode 0600 and refused when group or others can read it, or when it sits
inside a vault folder. A key may also come from an environment variable
(:data:`KEY_ENV`, same hex form) or from a passphrase stretched with scrypt and the
vault's own random salt. The site secret used for pseudonyms has the same form and is
made with the same ``fedvault data keygen``.

Only :func:`key_id` (a one-way hash) is ever written anywhere; keys are never logged.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fedvault.common.errors import ConfigError

KEY_BYTES = 32
KEY_ENV = "FEDVAULT_DATA_KEY"
PASSPHRASE_ENV = "FEDVAULT_DATA_PASSPHRASE"  # noqa: S105 - a variable name
NEW_PASSPHRASE_ENV = "FEDVAULT_DATA_NEW_PASSPHRASE"  # noqa: S105 - a variable name
SECRET_ENV = "FEDVAULT_DATA_SECRET"  # noqa: S105 - a variable name
#: A file with this name marks a vault folder (see fedvault.client.data.vault).
VAULT_MARKER = "manifest.fvm"
_SCRYPT_N = 2**15
_SCRYPT_R = 8
_SCRYPT_P = 1
_MIN_PASSPHRASE = 12


def generate_key() -> bytes:
    """32 bytes from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def key_id(key: bytes) -> str:
    """A public, one-way name for a key (32 hex characters): safe to print and store."""
    return hashlib.sha256(b"fedvault key id v1\x00" + key).hexdigest()[:32]


def write_key(path: Path, key: bytes | None = None) -> bytes:
    """Write a new key file with mode 0600 (its folder, if new, 0700); refuse to
    overwrite or to write in a vault.

    Returns the key written (a fresh random one unless ``key`` is given).
    """
    key = generate_key() if key is None else key
    _check_length(key, str(path))
    _refuse_in_vault(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"{path}: {path.parent} is not a folder")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # private key folder
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"{path}: already exists; keys are never overwritten (choose another path)"
        ) from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        if os.name == "posix":
            os.fchmod(handle.fileno(), 0o600)
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key


def load_key(path: Path, *, vault_dir: Path | None = None) -> bytes:
    """Read a key file, refusing loose permissions and key files inside a vault.

    ``vault_dir`` names the vault the key is for (it may not exist yet); the key file
    must not lie inside it, nor inside any existing vault folder.
    """
    if not path.is_file():
        raise ConfigError(f"key file not found: {path} (create one with keygen)")
    if os.name == "posix":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"key file {path}: permissions {mode:04o} let other users read it; "
                f"run: chmod 600 {path}"
            )
    resolved = path.resolve()
    if vault_dir is not None and resolved.is_relative_to(vault_dir.resolve()):
        raise ConfigError(
            f"key file {path} lies inside the vault {vault_dir}; keep keys elsewhere"
        )
    _refuse_in_vault(path)
    try:
        text = path.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(
            f"key file {path}: not a fedvault key (expected 64 hex characters)"
        ) from None
    _check_length(key, f"key file {path}")
    return key


def key_from_env(
    environ: Mapping[str, str] | None = None, name: str = KEY_ENV
) -> bytes | None:
    """The key in environment variable ``name`` (64 hex characters); None if unset."""
    environ = os.environ if environ is None else environ
    text = environ.get(name)
    if not text:
        return None
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError(f"{name}: not a key (expected 64 hex characters)") from None
    _check_length(key, name)
    return key


def key_from_passphrase(passphrase: str, salt: bytes) -> bytes:
    """Stretch a passphrase into a 256-bit key with scrypt (N=2**15, r=8, p=1)."""
    if len(passphrase) < _MIN_PASSPHRASE:
        raise ConfigError(
            f"passphrase: too short ({len(passphrase)} characters); use at least "
            f"{_MIN_PASSPHRASE}"
        )
    kdf = Scrypt(salt=salt, length=KEY_BYTES, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return kdf.derive(passphrase.encode("utf-8"))


def _check_length(key: bytes, where: str) -> None:
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"{where}: a key is {KEY_BYTES} bytes ({2 * KEY_BYTES} hex characters), "
            f"got {len(key)} bytes"
        )


def _refuse_in_vault(path: Path) -> None:
    for folder in path.resolve().parents:
        if (folder / VAULT_MARKER).is_file():
            raise ConfigError(
                f"key file {path} lies inside the vault {folder}; keep keys elsewhere"
            )
