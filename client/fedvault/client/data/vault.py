"""The encrypted site-data vault: atomic writes, verified reads, key rotation.

Reading (what the ClientApp and ``fedvault simulate --vaults`` use)::

    key = load_key(Path("site.key"), vault_dir=vault)
    frame = read_frame(vault, key)          # whole dataset, verified
    for batch in iter_batches(vault, key):  # one chunk at a time
        ...

The frame holds the stored training columns in schema order: every ``feature``,
``quasi-identifier`` (generalized; k-anonymous together), ``sensitive`` and kept
``text`` column, and the ``target`` column (its name is ``read_manifest(...).target``).
It never holds identifiers: pseudonym columns (keyed HMACs, role ``identifier``) are
added only with ``include_pseudonyms=True``.

Every check happens before any row is returned: the manifest is authenticated and
every chunk file is hashed against it first, so a wrong key or any changed, missing,
reordered or extra chunk raises one opaque :class:`IntegrityError` and no plaintext.
The byte format is described in :mod:`fedvault.client.data.vault_format`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fedvault.client.data import vault_format as fmt
from fedvault.client.data.keys import key_id
from fedvault.client.data.vault_writer import VaultWriter
from fedvault.common.errors import ConfigError, DataError, IntegrityError

__all__ = [
    "Manifest",
    "VaultWriter",
    "iter_batches",
    "read_frame",
    "read_header",
    "read_manifest",
    "rotate_key",
    "verify_vault",
]

Manifest = fmt.Manifest
IDENTIFIER_ROLE = "identifier"


def read_header(vault_dir: Path) -> fmt.Header:
    """The clear-text header (for the scrypt salt); authenticated by a later read."""
    return fmt.Header.parse(_manifest_blob(vault_dir))


def read_manifest(vault_dir: Path, key: bytes) -> Manifest:
    """Decrypt and authenticate the manifest (no chunk is read)."""
    expected = bytes.fromhex(key_id(key))
    return fmt.open_manifest(key, _manifest_blob(vault_dir), expected)


def iter_batches(
    vault_dir: Path, key: bytes, *, include_pseudonyms: bool = False
) -> Iterator[pd.DataFrame]:
    """Stream the vault one chunk (at most the import's chunk size) at a time.

    All verification happens in this call, before the first batch is produced.
    """
    manifest = read_manifest(vault_dir, key)
    _verify_chunk_files(vault_dir, manifest)
    columns = _columns(manifest, include_pseudonyms=include_pseudonyms)
    subkey = fmt.derive_subkey(key, bytes.fromhex(manifest.dataset_id))
    return _batches(vault_dir, manifest, subkey, columns)


def verify_vault(vault_dir: Path, key: bytes) -> Manifest:
    """Authenticate the manifest and decrypt-and-authenticate every chunk (no row
    is returned); the manifest back when all of it is intact.

    Raises :class:`IntegrityError` naming the first chunk file that is missing,
    changed or not the one the manifest lists (a wrong key fails on the manifest,
    opaquely), or :class:`DataError` when there is no vault at ``vault_dir``.
    """
    manifest = read_manifest(vault_dir, key)
    if not manifest.chunks or sum(c.rows for c in manifest.chunks) != manifest.rows:
        raise IntegrityError("the manifest's chunk list does not add up to its rows")
    dataset_id = bytes.fromhex(manifest.dataset_id)
    subkey = fmt.derive_subkey(key, dataset_id)
    for index, entry in enumerate(manifest.chunks):
        try:
            _open_chunk(vault_dir, entry, subkey, dataset_id, index)
        except IntegrityError:
            raise IntegrityError(
                f"chunk {index + 1} of {len(manifest.chunks)} ({entry.file}) is "
                "missing or damaged"
            ) from None
    return manifest


def read_frame(
    vault_dir: Path, key: bytes, *, include_pseudonyms: bool = False
) -> pd.DataFrame:
    """The whole dataset, decrypted and verified (columns: see the module docstring)."""
    batches = list(iter_batches(vault_dir, key, include_pseudonyms=include_pseudonyms))
    return pd.concat(batches, ignore_index=True)


def rotate_key(
    vault_dir: Path, old_key: bytes, new_key: bytes, *, kdf_salt: bytes | None = None
) -> Manifest:
    """Re-encrypt every chunk and the manifest under ``new_key``, atomically.

    The dataset id, rows and reports are kept; nonces and the subkey are new.
    """
    manifest = read_manifest(vault_dir, old_key)
    _verify_chunk_files(vault_dir, manifest)
    dataset_id = bytes.fromhex(manifest.dataset_id)
    old_subkey = fmt.derive_subkey(old_key, dataset_id)
    with VaultWriter(
        vault_dir,
        new_key,
        kdf_salt=kdf_salt,
        dataset_id=dataset_id,
        replacing=old_key,
    ) as writer:
        if writer.replaced is None or writer.replaced.generation != manifest.generation:
            raise ConfigError(f"vault {vault_dir}: changed while being rotated; retry")
        for index, entry in enumerate(manifest.chunks):
            plain = _open_chunk(vault_dir, entry, old_subkey, dataset_id, index)
            writer.write_plaintext(plain, entry.rows)
        details = dict(manifest.details)
        details["key-rotated-from"] = manifest.key_id
        return writer.commit(
            target=manifest.target,
            columns=manifest.columns,
            schema=manifest.schema,
            schema_hash=manifest.schema_hash,
            quality=manifest.quality,
            details=details,
        )


def _manifest_blob(vault_dir: Path) -> bytes:
    path = vault_dir / fmt.MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"no vault at {vault_dir} ({fmt.MANIFEST_NAME} not found)")
    return path.read_bytes()


def _verify_chunk_files(vault_dir: Path, manifest: Manifest) -> None:
    if not manifest.chunks or sum(c.rows for c in manifest.chunks) != manifest.rows:
        raise IntegrityError()
    for entry in manifest.chunks:
        digest = hashlib.sha256()
        try:
            with (vault_dir / entry.file).open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        except OSError:
            raise IntegrityError() from None
        if not hmac.compare_digest(digest.hexdigest(), entry.sha256):
            raise IntegrityError()


def _columns(manifest: Manifest, *, include_pseudonyms: bool) -> list[str]:
    return [
        name
        for name, role in manifest.columns
        if include_pseudonyms or role != IDENTIFIER_ROLE
    ]


def _batches(
    vault_dir: Path, manifest: Manifest, subkey: bytes, columns: list[str]
) -> Iterator[pd.DataFrame]:
    dataset_id = bytes.fromhex(manifest.dataset_id)
    for index, entry in enumerate(manifest.chunks):
        plain = _open_chunk(vault_dir, entry, subkey, dataset_id, index)
        table = pq.read_table(pa.BufferReader(plain), columns=columns)
        frame: pd.DataFrame = table.to_pandas()
        if len(frame) != entry.rows:
            raise IntegrityError()
        yield frame


def _open_chunk(
    vault_dir: Path,
    entry: fmt.ChunkEntry,
    subkey: bytes,
    dataset_id: bytes,
    index: int,
) -> bytes:
    try:
        blob = (vault_dir / entry.file).read_bytes()
    except OSError:
        raise IntegrityError() from None
    if not hmac.compare_digest(hashlib.sha256(blob).hexdigest(), entry.sha256):
        raise IntegrityError()
    return fmt.open_sealed(subkey, fmt.chunk_ad(dataset_id, index), blob)
