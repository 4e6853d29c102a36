"""The vault's byte format, version 1 (hazmat: use :mod:`fedvault.client.data.vault`).

A vault is a folder::

    manifest.fvm           header | nonce | AES-256-GCM(manifest JSON)   (commit point)
    g<16 hex>/000000.fvc   nonce | AES-256-GCM(Parquet bytes of chunk 0)
    g<16 hex>/000001.fvc   ...

``header`` (58 bytes, in the clear, authenticated as associated data)::

    magic "FVVAULT\\0" (8) | format version, u16 big-endian (2) | dataset id (16)
    | key id (16) | scrypt salt (16, used only for passphrase keys)

Each dataset (one import) encrypts with its own subkey,
``HKDF-SHA256(key, salt=dataset id, info="fedvault vault v1")``, and a
fresh random 96-bit nonce per chunk and per manifest. A chunk's associated data is
``magic | version | dataset id | "chunk" | index (u64 BE)``, so a chunk moved to
another position or another vault fails authentication; the manifest lists every
chunk's SHA-256 and row count, so a dropped, added or truncated chunk is caught too.
Every failure raises the same opaque :class:`~fedvault.common.errors.IntegrityError`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedvault.common.errors import IntegrityError

MAGIC = b"FVVAULT\x00"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.fvm"
NONCE_BYTES = 12
ID_BYTES = 16
HEADER_BYTES = len(MAGIC) + 2 + 3 * ID_BYTES
_TAG_BYTES = 16
_HKDF_INFO = b"fedvault vault v1"


@dataclass(frozen=True)
class Header:
    """The clear-text start of ``manifest.fvm`` (trusted only after decryption)."""

    dataset_id: bytes
    key_id: bytes
    kdf_salt: bytes
    version: int = FORMAT_VERSION

    def to_bytes(self) -> bytes:
        return (
            MAGIC
            + struct.pack(">H", self.version)
            + self.dataset_id
            + self.key_id
            + self.kdf_salt
        )

    @classmethod
    def parse(cls, blob: bytes) -> Header:
        if len(blob) < HEADER_BYTES + NONCE_BYTES + _TAG_BYTES or not blob.startswith(
            MAGIC
        ):
            raise IntegrityError()
        (version,) = struct.unpack(">H", blob[8:10])
        if version != FORMAT_VERSION:
            raise IntegrityError(
                f"integrity check failed (vault format version {version} is not "
                f"supported; this fedvault reads version {FORMAT_VERSION})"
            )
        ids = [blob[10 + i * ID_BYTES : 10 + (i + 1) * ID_BYTES] for i in range(3)]
        return cls(dataset_id=ids[0], key_id=ids[1], kdf_salt=ids[2], version=version)


@dataclass(frozen=True, kw_only=True)
class ChunkEntry:
    file: str
    rows: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What a vault holds. Decrypted and authenticated by ``read_manifest``.

    ``columns`` lists the stored columns as (name, role) pairs, in order; ``target``
    is the label column; ``quality`` is the data-quality report of the import.
    """

    dataset_id: str
    key_id: str
    generation: str
    created: str
    rows: int
    chunks: tuple[ChunkEntry, ...]
    target: str
    columns: tuple[tuple[str, str], ...]
    schema: dict[str, Any]
    schema_hash: str
    quality: dict[str, Any]
    details: dict[str, Any]
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format-version": self.format_version,
            "dataset-id": self.dataset_id,
            "key-id": self.key_id,
            "generation": self.generation,
            "created": self.created,
            "rows": self.rows,
            "chunks": [
                {"file": c.file, "rows": c.rows, "sha256": c.sha256}
                for c in self.chunks
            ],
            "target": self.target,
            "columns": [list(pair) for pair in self.columns],
            "schema": self.schema,
            "schema-hash": self.schema_hash,
            "quality": self.quality,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            format_version=int(data["format-version"]),
            dataset_id=str(data["dataset-id"]),
            key_id=str(data["key-id"]),
            generation=str(data["generation"]),
            created=str(data["created"]),
            rows=int(data["rows"]),
            chunks=tuple(
                ChunkEntry(file=c["file"], rows=int(c["rows"]), sha256=c["sha256"])
                for c in data["chunks"]
            ),
            target=str(data["target"]),
            columns=tuple((str(n), str(r)) for n, r in data["columns"]),
            schema=dict(data["schema"]),
            schema_hash=str(data["schema-hash"]),
            quality=dict(data["quality"]),
            details=dict(data["details"]),
        )


def derive_subkey(key: bytes, dataset_id: bytes) -> bytes:
    """The per-dataset AES-256 key: HKDF-SHA256(key, salt=dataset id)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=dataset_id, info=_HKDF_INFO)
    return hkdf.derive(key)


def chunk_ad(dataset_id: bytes, index: int) -> bytes:
    version = struct.pack(">H", FORMAT_VERSION)
    return MAGIC + version + dataset_id + b"chunk" + struct.pack(">Q", index)


def manifest_ad(header: Header) -> bytes:
    return header.to_bytes() + b"manifest"


def seal(subkey: bytes, nonce: bytes, associated: bytes, plaintext: bytes) -> bytes:
    """``nonce || AES-256-GCM(plaintext)``; the nonce must never repeat for a subkey."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError("nonce must be 12 bytes")
    return nonce + AESGCM(subkey).encrypt(nonce, plaintext, associated)


def open_sealed(subkey: bytes, associated: bytes, blob: bytes) -> bytes:
    """Inverse of :func:`seal`; any mismatch raises :class:`IntegrityError`."""
    if len(blob) < NONCE_BYTES + _TAG_BYTES:
        raise IntegrityError()
    try:
        return AESGCM(subkey).decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated
        )
    except InvalidTag:
        raise IntegrityError() from None


def seal_manifest(
    subkey: bytes, header: Header, nonce: bytes, manifest: Manifest
) -> bytes:
    body = json.dumps(manifest.to_dict(), sort_keys=True, separators=(",", ":"))
    return header.to_bytes() + seal(subkey, nonce, manifest_ad(header), body.encode())


def open_manifest(key: bytes, blob: bytes, expected_key_id: bytes) -> Manifest:
    """Authenticate and decode ``manifest.fvm``; check it names the expected key."""
    header = Header.parse(blob)
    if header.key_id != expected_key_id:
        raise IntegrityError()
    subkey = derive_subkey(key, header.dataset_id)
    plain = open_sealed(subkey, manifest_ad(header), blob[HEADER_BYTES:])
    try:
        manifest = Manifest.from_dict(json.loads(plain))
    except (ValueError, KeyError, TypeError):
        raise IntegrityError() from None
    if manifest.dataset_id != header.dataset_id.hex() or manifest.key_id != (
        header.key_id.hex()
    ):
        raise IntegrityError()
    return manifest
