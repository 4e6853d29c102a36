"""The privacy ledger's record format and hash chain (no files, no locks).

Each record is one line of canonical JSON (sorted keys, no spaces, ASCII, no NaN)
whose keys are :class:`LedgerRecord`'s field names. ``prev_hash`` is the hash of the
record before it (a per-dataset genesis hash for the first); ``hash`` is the SHA-256,
under a domain prefix, of the record's canonical JSON without ``hash``.
:func:`verify_chain` re-walks the chain and raises :class:`IntegrityError` on any
edit, deletion, reordering or truncation. Used by :mod:`fedvault.client.ledger`;
changing anything here changes the files every site has already written.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fedvault.common.errors import ConfigError, IntegrityError
from fedvault.common.privacy import ACCOUNTANTS, Accountant, Step

FORMAT_VERSION = 1
_DOMAIN = b"fedvault.ledger.v1\n"
HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LedgerRecord:
    """One trained round, as stored (one JSON line, keys as these field names)."""

    seq: int
    dataset_id: str
    run_id: str
    round: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: Accountant
    epsilon: float
    update_sha256: str
    time: str
    prev_hash: str
    hash: str

    @property
    def step(self) -> Step:
        return Step(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps,
        )


def canonical(obj: dict[str, Any]) -> bytes:
    """The one byte form of a record or head: sorted keys, no spaces, ASCII."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.encode("ascii")


def digest(body: dict[str, Any]) -> str:
    """The hash of a record's fields other than ``hash``."""
    return hashlib.sha256(_DOMAIN + canonical(body)).hexdigest()


def genesis(dataset_id: str) -> str:
    """The ``prev_hash`` of a dataset's first record (and an empty ledger's head)."""
    return hashlib.sha256(_DOMAIN + b"genesis\n" + dataset_id.encode()).hexdigest()


def check_new(
    run_id: str, server_round: int, step: Step, clip: float, update_hash: str
) -> None:
    """Raise :class:`ConfigError`, naming the key, unless these make a valid record."""
    checks = {
        "run-id": isinstance(run_id, str) and 0 < len(run_id) <= 128,
        "round": isinstance(server_round, int) and server_round >= 0,
        "steps": isinstance(step.steps, int) and step.steps >= 1,
        "sample-rate": 0 < step.sample_rate <= 1,
        "noise-multiplier": math.isfinite(step.noise_multiplier)
        and step.noise_multiplier > 0,
        "max-grad-norm": math.isfinite(clip) and clip > 0,
        "update-hash": isinstance(update_hash, str)
        and bool(HEX64.fullmatch(update_hash)),
    }
    for key, ok in checks.items():
        if not ok:
            raise ConfigError(f"ledger record: invalid {key}")


def seal(body: dict[str, Any]) -> tuple[LedgerRecord, bytes]:
    """The record of ``body`` (all fields but ``hash``) and its line in the file."""
    record = LedgerRecord(**body, hash=digest(body))
    return record, canonical(asdict(record)) + b"\n"


# JSON type of each stored field (bool is excluded separately: it is an int).
_TYPES = {"int": int, "float": float, "str": str, "Accountant": str}
_FIELD_TYPES = {f.name: _TYPES[str(f.type)] for f in fields(LedgerRecord)}


def _parse_record(line: bytes, where: str) -> LedgerRecord:
    try:
        data: dict[str, Any] = json.loads(line)
    except ValueError:
        raise IntegrityError(f"{where}: not a JSON record") from None
    if not isinstance(data, dict) or set(data) != set(_FIELD_TYPES):
        raise IntegrityError(f"{where}: fields missing or added")
    for key, kind in _FIELD_TYPES.items():
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise IntegrityError(f"{where}: field {key!r} has the wrong type")
    if not (HEX64.fullmatch(data["hash"]) and HEX64.fullmatch(data["prev_hash"])):
        raise IntegrityError(f"{where}: malformed hash")
    if canonical(data) != line:
        raise IntegrityError(f"{where}: not in canonical form (edited by hand?)")
    body = {k: v for k, v in data.items() if k != "hash"}
    if not hmac.compare_digest(digest(body), data["hash"]):
        raise IntegrityError(f"{where}: hash mismatch (record edited)")
    return LedgerRecord(**data)


def _check_sane(record: LedgerRecord, where: str) -> None:
    ok = (
        record.steps >= 1
        and 0 < record.sample_rate <= 1
        and math.isfinite(record.noise_multiplier)
        and record.noise_multiplier > 0
        and math.isfinite(record.max_grad_norm)
        and record.max_grad_norm > 0
        and 0 < record.delta < 1
        and record.accountant in ACCOUNTANTS
        and math.isfinite(record.epsilon)
        and record.epsilon >= 0
        and bool(HEX64.fullmatch(record.update_sha256))
    )
    if not ok:
        raise IntegrityError(f"{where}: values out of range")


def verify_chain(
    dataset_id: str, source: Path, data: bytes, *, count: int, last: str
) -> list[LedgerRecord]:
    """The records of ``data`` (the bytes of ``source``, complete lines) if they chain
    from the genesis of ``dataset_id`` to the head's ``count`` and ``last`` hash;
    else :class:`IntegrityError`."""
    records: list[LedgerRecord] = []
    prev = genesis(dataset_id)
    for number, line in enumerate(data.splitlines(), start=1):
        where = f"{source}: record {number}"
        record = _parse_record(line, where)
        _check_sane(record, where)
        if record.seq != number - 1 or record.dataset_id != dataset_id:
            raise IntegrityError(f"{where}: out of place (records reordered or moved)")
        if not hmac.compare_digest(record.prev_hash, prev):
            raise IntegrityError(
                f"{where}: chain broken (a record before it was deleted, edited or "
                "reordered)"
            )
        records.append(record)
        prev = record.hash
    at_head: str | None = None
    if count == 0:
        at_head = genesis(dataset_id)
    elif count <= len(records):
        at_head = records[count - 1].hash
    # One record past the head is an append whose head update did not finish: it is
    # kept (counting it can only overstate epsilon) and the next append fixes the head.
    if (
        len(records) not in (count, count + 1)
        or at_head is None
        or not hmac.compare_digest(at_head, last)
    ):
        raise IntegrityError(
            f"{source}: holds {len(records)} records but its head file says {count} "
            "(records deleted, or the head file replaced)"
        )
    return records
