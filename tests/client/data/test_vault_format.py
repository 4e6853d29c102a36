"""Vault format: known-answer vectors and tamper detection."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pandas as pd
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedvault.client.data import vault_format as fmt
from fedvault.client.data import vault_writer
from fedvault.client.data.keys import key_id
from fedvault.client.data.vault import iter_batches, read_frame, read_manifest
from fedvault.common.errors import IntegrityError

KEY = bytes(range(32))
DATASET = bytes(range(16))
NONCE = bytes(range(12))
PLAINTEXT = b"fedvault vault v1 known answer"
SUBKEY_HEX = "b5fb802978c7cc6f6e3896a38758d83b56f0439cf026b945c5426e151579c902"
CHUNK3_HEX = (
    "000102030405060708090a0b"
    "587ad32344ae6bb4d40c07f91ec4842ad8b4008b54d136e964d7a26c80c6"
    "3f741ffa5627bf38a13edaf87985a8ba"
)
HEADER_HEX = (
    "46565641554c5400"
    "0001"
    "000102030405060708090a0b0c0d0e0f"
    "101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f"
)


def test_known_answer_subkey_and_key_id() -> None:
    assert fmt.derive_subkey(KEY, DATASET).hex() == SUBKEY_HEX
    independent = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=DATASET, info=b"fedvault vault v1"
    ).derive(KEY)
    assert independent.hex() == SUBKEY_HEX
    assert key_id(KEY) == "2a7404f2344dd897bfcf481bc0444490"


def test_known_answer_chunk() -> None:
    subkey = bytes.fromhex(SUBKEY_HEX)
    blob = fmt.seal(subkey, NONCE, fmt.chunk_ad(DATASET, 3), PLAINTEXT)
    assert blob.hex() == CHUNK3_HEX
    # The associated data, spelled out: magic | version | dataset id | "chunk" | index
    ad = b"FVVAULT\x00" + b"\x00\x01" + DATASET + b"chunk" + struct.pack(">Q", 3)
    assert AESGCM(subkey).decrypt(NONCE, blob[12:], ad) == PLAINTEXT
    assert fmt.open_sealed(subkey, fmt.chunk_ad(DATASET, 3), blob) == PLAINTEXT


def test_known_answer_header() -> None:
    header = fmt.Header(
        dataset_id=DATASET, key_id=bytes(range(16, 32)), kdf_salt=bytes(range(32, 48))
    )
    assert header.to_bytes().hex() == HEADER_HEX
    assert len(header.to_bytes()) == fmt.HEADER_BYTES == 58


def test_chunk_at_another_index_fails() -> None:
    subkey = bytes.fromhex(SUBKEY_HEX)
    blob = bytes.fromhex(CHUNK3_HEX)
    with pytest.raises(IntegrityError):
        fmt.open_sealed(subkey, fmt.chunk_ad(DATASET, 2), blob)
    with pytest.raises(IntegrityError):
        fmt.open_sealed(subkey, fmt.chunk_ad(bytes(16), 3), blob)


def test_injected_randomness_makes_writes_reproducible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = iter(range(1000))
    monkeypatch.setattr(
        vault_writer, "_random_bytes", lambda n: bytes([next(counter)] * n)
    )
    frame = pd.DataFrame({"x": [1.0, 2.0], "y": ["a", "b"]})
    blobs = []
    for name in ("a", "b"):
        counter = iter(range(1000))
        with vault_writer.VaultWriter(tmp_path / name, KEY) as writer:
            writer.write_chunk(frame)
            manifest = writer.commit(
                target="y",
                columns=[("x", "feature"), ("y", "target")],
                schema={},
                schema_hash="0" * 64,
                quality={},
                details={},
            )
        blobs.append((tmp_path / name / manifest.chunks[0].file).read_bytes())
    assert blobs[0] == blobs[1]
    assert blobs[0][:12] == bytes([3] * 12)  # dataset id, salt, generation, nonce


def _files(vault: Path) -> list[Path]:
    return sorted(p for p in vault.rglob("*") if p.is_file())


def test_small_vault_reads_back(small_vault: Path, key: bytes) -> None:
    frame = read_frame(small_vault, key)
    assert len(frame) == 10
    assert list(frame.columns) == ["age", "sex", "score", "label"]
    manifest = read_manifest(small_vault, key)
    assert len(manifest.chunks) == 3
    assert [len(b) for b in iter_batches(small_vault, key)] == [4, 4, 2]


def test_flipping_any_byte_of_any_file_fails(small_vault: Path, key: bytes) -> None:
    files = _files(small_vault)
    assert len(files) == 4  # manifest + 3 chunks
    checked = 0
    for path in files:
        original = path.read_bytes()
        step = 1 if path.name == fmt.MANIFEST_NAME else max(1, len(original) // 97)
        positions = sorted({*range(0, len(original), step), len(original) - 1})
        for pos in positions:
            damaged = bytearray(original)
            damaged[pos] ^= 0x01
            path.write_bytes(bytes(damaged))
            with pytest.raises(IntegrityError):
                read_frame(small_vault, key)
            checked += 1
        path.write_bytes(original)
    assert checked > 200
    assert len(read_frame(small_vault, key)) == 10


def test_every_manifest_byte_is_authenticated(small_vault: Path, key: bytes) -> None:
    path = small_vault / fmt.MANIFEST_NAME
    original = path.read_bytes()
    for pos in range(len(original)):
        damaged = bytearray(original)
        damaged[pos] ^= 0x80
        path.write_bytes(bytes(damaged))
        with pytest.raises(IntegrityError):
            read_manifest(small_vault, key)
    path.write_bytes(original)


def test_dropped_chunk_fails(small_vault: Path, key: bytes) -> None:
    chunks = [p for p in _files(small_vault) if p.suffix == ".fvc"]
    chunks[-1].unlink()
    with pytest.raises(IntegrityError):
        read_frame(small_vault, key)


def test_swapped_chunks_fail(small_vault: Path, key: bytes) -> None:
    first, second = [p for p in _files(small_vault) if p.suffix == ".fvc"][:2]
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    with pytest.raises(IntegrityError):
        read_frame(small_vault, key)


def test_truncated_and_extended_chunks_fail(small_vault: Path, key: bytes) -> None:
    chunk = next(p for p in _files(small_vault) if p.suffix == ".fvc")
    original = chunk.read_bytes()
    for damaged in (original[:-1], original + b"\x00", b""):
        chunk.write_bytes(damaged)
        with pytest.raises(IntegrityError):
            read_frame(small_vault, key)


def test_chunk_from_another_vault_fails(
    small_vault: Path, key: bytes, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(small_vault, other)
    # same key, new dataset
    with vault_writer.VaultWriter(other, key, replacing=key) as writer:
        writer.write_chunk(pd.DataFrame({"age": ["30-39"], "label": ["yes"]}))
        writer.commit(
            target="label",
            columns=[],
            schema={},
            schema_hash="",
            quality={},
            details={},
        )
    foreign = next(p for p in _files(other) if p.suffix == ".fvc")
    mine = next(p for p in _files(small_vault) if p.suffix == ".fvc")
    mine.write_bytes(foreign.read_bytes())
    with pytest.raises(IntegrityError):
        read_frame(small_vault, key)


def test_wrong_key_fails_opaquely(small_vault: Path, key: bytes) -> None:
    wrong = bytes(32)
    with pytest.raises(IntegrityError) as caught:
        read_frame(small_vault, wrong)
    assert str(caught.value) == "integrity check failed"
    with pytest.raises(IntegrityError):
        iter_batches(small_vault, wrong)


def test_no_batch_is_produced_before_all_chunks_verify(
    small_vault: Path, key: bytes
) -> None:
    last = [p for p in _files(small_vault) if p.suffix == ".fvc"][-1]
    damaged = bytearray(last.read_bytes())
    damaged[-1] ^= 0xFF
    last.write_bytes(bytes(damaged))
    # the error comes from the call itself, before any (authentic) first batch
    with pytest.raises(IntegrityError):
        iter_batches(small_vault, key)
