"""The site's accountant cache and the key that authenticates it.

::

    STATE/accountant/rdp-*.json   Opacus' per-step RDP curves, one per (sigma, q)
    STATE/accountant.key          32 random bytes, mode 0600, created on first use

Every epsilon the site computes composes these curves, so a forged curve (say, all
zeros) would make a spent budget look unspent. The same key authenticates each
ledger's head (:mod:`fedvault.client._ledger_files`). Each file carries an HMAC-SHA256
under the site's key (:func:`fedvault.common.privacy.keep_curves_in`); a file that
does not verify is ignored and recomputed, and ``fedvault client ledger verify``
reports it. The key protects the cache against whoever can write the state folder
but not read the key; the site's operator (who can read it, and can delete the whole
state folder) is out of scope, as for the ledger (docs/ledger.md).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from fedvault.common.errors import IntegrityError
from fedvault.common.files import fsync_dir, naming
from fedvault.common.privacy import CURVE_PATTERN, keep_curves_in, verify_curves

CACHE_FOLDER = "accountant"
KEY_FILE = "accountant.key"
_KEY_BYTES = 32


def existing_key(state_dir: Path) -> bytes | None:
    """The site's key, None when it has none; IntegrityError for a damaged one."""
    path = state_dir / KEY_FILE
    if not path.exists():
        return None
    key = path.read_bytes()
    if len(key) != _KEY_BYTES:
        raise IntegrityError(f"{path}: accountant cache key unreadable or edited")
    return key


def cache_key(state_dir: Path) -> bytes:
    """The site's accountant cache key, created (0600, atomically) if missing.

    Raises :class:`IntegrityError` for a key file of the wrong size.
    """
    key = existing_key(state_dir)
    if key is not None:
        return key
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".{KEY_FILE}.{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with naming(state_dir / KEY_FILE), os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(_KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race
            os.link(tmp, state_dir / KEY_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(state_dir)
    return cache_key(state_dir)


def use_cache(state_dir: Path) -> None:
    """Keep this process's RDP curves in the site's authenticated cache."""
    keep_curves_in(state_dir / CACHE_FOLDER, secret=cache_key(state_dir))


def verify_cache(state_dir: Path) -> int:
    """How many cached curves verify under the site's key.

    Raises :class:`IntegrityError` if any does not, or if curves are cached but
    the key is missing (nothing to check: 0).
    """
    folder = state_dir / CACHE_FOLDER
    key = existing_key(state_dir)
    if key is None:
        if folder.is_dir() and any(folder.glob(CURVE_PATTERN)):
            raise IntegrityError(
                f"{folder}: cached RDP curves but no key ({state_dir / KEY_FILE}) to "
                "authenticate them; the site ignores and recomputes them"
            )
        return 0
    return verify_curves(folder, key)
