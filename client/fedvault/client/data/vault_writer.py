"""Writing a vault atomically.

Chunks are encrypted into a temporary folder next to the vault (``.NAME.gXXXX.tmp``)
and fsynced; on commit the folder is renamed into the vault as a new generation
``gXXXX/``, and a new ``manifest.fvm`` naming it replaces the old one with
``os.replace`` — the single atomic commit point. Only then are older generations
removed. If anything fails before the commit (an exception, a full disk), everything
new is removed and the previous vault stays byte-identical; after a hard crash the
previous vault is still the one the manifest names; the next write to the vault
removes unreferenced generations inside it (a stray ``.NAME.gXXXX.tmp`` folder next to
it holds only ciphertext and may be deleted). Files are created with mode 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fedvault.client.data import vault_format as fmt
from fedvault.client.data.keys import key_id
from fedvault.common.errors import ConfigError, DataError, IntegrityError
from fedvault.common.files import fsync_dir

logger = logging.getLogger(__name__)

_GENERATION = re.compile(r"^g[0-9a-f]{16}$")
#: Source of nonces, dataset ids and generations; tests may replace it.
_random_bytes = os.urandom


class VaultWriter:
    """Context manager that writes one generation of a vault; see the module docstring.

    Usage::

        with VaultWriter(vault_dir, key) as writer:
            for frame in frames:
                writer.write_chunk(frame)
            manifest = writer.commit(target=..., columns=..., ...)

    One writer at a time: entering takes an exclusive lock (``.NAME.lock`` next to
    the vault) held until exit, so a concurrent import or key rotation is refused
    with :class:`ConfigError` and never sweeps a generation being committed. A vault
    that exists is replaced only when ``replacing`` is a key that opens it (the
    replaced manifest is then :attr:`replaced`); otherwise entering raises
    :class:`ConfigError` and nothing is written.
    """

    def __init__(
        self,
        vault_dir: Path,
        key: bytes,
        *,
        kdf_salt: bytes | None = None,
        dataset_id: bytes | None = None,
        replacing: bytes | None = None,
    ) -> None:
        self.vault_dir = vault_dir
        self._key_id = bytes.fromhex(key_id(key))
        self._dataset_id = dataset_id or _random_bytes(fmt.ID_BYTES)
        self._kdf_salt = kdf_salt or _random_bytes(fmt.ID_BYTES)
        self._subkey = fmt.derive_subkey(key, self._dataset_id)
        self.generation = "g" + _random_bytes(8).hex()
        self._tmp = vault_dir.parent / f".{vault_dir.name}.{self.generation}.tmp"
        self._chunks: list[fmt.ChunkEntry] = []
        self._created_vault = False
        self._committed = False
        self._replacing = replacing
        self._lock: tuple[int, Path] | None = None
        self.replaced: fmt.Manifest | None = None

    def __enter__(self) -> VaultWriter:
        _check_target(self.vault_dir)
        self.vault_dir.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.vault_dir)
        try:
            self.replaced = _existing(self.vault_dir, self._replacing)
            self._tmp.mkdir(mode=0o700)
        except BaseException:
            _unlock(self._lock)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._committed:
                self._discard()
        finally:
            if self._lock is not None:
                _unlock(self._lock)
                self._lock = None

    def write_chunk(self, frame: pd.DataFrame) -> None:
        """Encrypt one chunk of rows (as Parquet) into the pending generation."""
        self.write_plaintext(frame_to_parquet(frame), len(frame))

    def write_plaintext(self, plaintext: bytes, rows: int) -> None:
        index = len(self._chunks)
        nonce = _random_bytes(fmt.NONCE_BYTES)
        blob = fmt.seal(
            self._subkey, nonce, fmt.chunk_ad(self._dataset_id, index), plaintext
        )
        name = f"{index:06d}.fvc"
        _write_synced(self._tmp / name, blob)
        self._chunks.append(
            fmt.ChunkEntry(
                file=f"{self.generation}/{name}",
                rows=rows,
                sha256=hashlib.sha256(blob).hexdigest(),
            )
        )

    def commit(
        self,
        *,
        target: str,
        columns: Sequence[tuple[str, str]],
        schema: Mapping[str, Any],
        schema_hash: str,
        quality: Mapping[str, Any],
        details: Mapping[str, Any],
    ) -> fmt.Manifest:
        """Write the manifest and make this generation the vault, atomically."""
        if not self._chunks:
            raise DataError("nothing to write: no rows")
        header = fmt.Header(
            dataset_id=self._dataset_id, key_id=self._key_id, kdf_salt=self._kdf_salt
        )
        manifest = fmt.Manifest(
            dataset_id=self._dataset_id.hex(),
            key_id=self._key_id.hex(),
            generation=self.generation,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            rows=sum(c.rows for c in self._chunks),
            chunks=tuple(self._chunks),
            target=target,
            columns=tuple((str(n), str(r)) for n, r in columns),
            schema=dict(schema),
            schema_hash=schema_hash,
            quality=dict(quality),
            details=dict(details),
        )
        blob = fmt.seal_manifest(
            self._subkey, header, _random_bytes(fmt.NONCE_BYTES), manifest
        )
        fsync_dir(self._tmp)
        if not self.vault_dir.exists():
            self.vault_dir.mkdir(mode=0o700)
            self._created_vault = True
            fsync_dir(self.vault_dir.parent)
        os.rename(self._tmp, self.vault_dir / self.generation)
        pending = self.vault_dir / f".{fmt.MANIFEST_NAME}.{self.generation}.tmp"
        _write_synced(pending, blob)
        os.replace(pending, self.vault_dir / fmt.MANIFEST_NAME)  # the commit point
        self._committed = True
        fsync_dir(self.vault_dir)
        self._sweep()
        return manifest

    def _discard(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)
        if self.vault_dir.is_dir():
            shutil.rmtree(self.vault_dir / self.generation, ignore_errors=True)
            pending = self.vault_dir / f".{fmt.MANIFEST_NAME}.{self.generation}.tmp"
            with contextlib.suppress(FileNotFoundError):
                pending.unlink()
        if self._created_vault:
            with contextlib.suppress(OSError):
                self.vault_dir.rmdir()

    def _sweep(self) -> None:
        """Remove older generations and leftovers of interrupted writes."""
        for entry in self.vault_dir.iterdir():
            stale_dir = _GENERATION.match(entry.name) and entry.name != self.generation
            stale_file = entry.name.startswith(f".{fmt.MANIFEST_NAME}.")
            try:
                if stale_dir and entry.is_dir():
                    shutil.rmtree(entry)
                elif stale_file:
                    entry.unlink()
            except OSError as exc:
                logger.warning("could not remove old vault data %s: %s", entry, exc)


def frame_to_parquet(frame: pd.DataFrame) -> bytes:
    """A chunk's plaintext: the frame as Parquet (snappy), without the index.

    Only text columns are dictionary-encoded: for numbers it costs time and saves
    nothing.
    """
    buffer = io.BytesIO()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    text = [
        f.name
        for f in table.schema
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]
    pq.write_table(table, buffer, compression="snappy", use_dictionary=text)
    return buffer.getvalue()


def _check_target(vault_dir: Path) -> None:
    if vault_dir.exists() and not vault_dir.is_dir():
        raise ConfigError(f"vault {vault_dir}: exists and is not a folder")
    if (
        vault_dir.is_dir()
        and any(vault_dir.iterdir())
        and not (vault_dir / fmt.MANIFEST_NAME).is_file()
    ):
        raise ConfigError(
            f"vault {vault_dir}: folder is not empty and holds no vault; "
            "choose an empty or new folder"
        )


def lock_path(vault_dir: Path) -> Path:
    """The lock file of ``vault_dir`` (beside it: the vault may not exist yet)."""
    return vault_dir.parent / f".{vault_dir.name}.lock"


def _lock(vault_dir: Path) -> tuple[int, Path]:
    """Take the vault's write lock, or raise ConfigError naming who holds it.

    The lock file is removed on release, so a lock taken on a file that was just
    removed (its path now names another file) is dropped and taken again.
    """
    path = lock_path(vault_dir)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"vault {vault_dir}: another import or key rotation is writing it "
                f"(pid {holder}); wait for it to finish"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd, path


def _unlock(lock: tuple[int, Path]) -> None:
    fd, path = lock
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)  # closing releases the flock


def check_replace(vault_dir: Path, *, replace: bool) -> None:
    """Refuse to write over a vault that holds a dataset unless ``replace``: the
    early check of an import, repeated under the lock by :class:`VaultWriter`.

    Raises :class:`ConfigError` naming the vault.
    """
    if (vault_dir / fmt.MANIFEST_NAME).is_file() and not replace:
        raise ConfigError(
            f"vault {vault_dir}: already holds a dataset; pass --replace to replace it "
            "(under the same key), or choose another --vault"
        )


def _existing(vault_dir: Path, replacing: bytes | None) -> fmt.Manifest | None:
    """The manifest of the vault being replaced, checked under the lock."""
    if not (vault_dir / fmt.MANIFEST_NAME).is_file():
        return None
    if replacing is None:
        check_replace(vault_dir, replace=False)  # raises: the vault holds data
        return None
    try:
        return fmt.open_manifest(
            replacing,
            (vault_dir / fmt.MANIFEST_NAME).read_bytes(),
            bytes.fromhex(key_id(replacing)),
        )
    except IntegrityError:
        raise ConfigError(
            f"vault {vault_dir}: the key given does not open the dataset it holds; "
            "a vault is replaced only under its own key (rotate it with "
            "`fedvault data rotate-key` first, or choose another --vault)"
        ) from None


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
