"""The digest of the update a message carries, and its round: what a site's access
log and the coordinator's audit log both record of an update, so that one can be
checked against the other.

A plain training reply carries its update as arrays (:func:`arrays_digest`); a
SecAgg+ masking-stage reply carries the site's masked vector as a list of bytes in
Flower's ``secaggplus_configs`` record (:func:`masked_vector_digest`).
:func:`update_digest` is whichever of the two the reply holds; both sides call it on
the same bytes."""

from __future__ import annotations

import hashlib

from flwr.app import Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)

from fedvault.common.protocol import SERVER_ROUND

# the SecAgg+ stage whose reply carries a site's masked vector, as both logs name it
MASKED_STAGE = f"secagg:{Stage.COLLECT_MASKED_VECTORS}"


def message_round(msg: Message) -> int | None:
    """The round a message names in any of its config records (``None``: none)."""
    for record in msg.content.config_records.values():
        value = record.get(SERVER_ROUND)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def arrays_digest(content: RecordDict) -> str:
    """``sha256:HEX`` over every array of ``content`` (records and arrays in name
    order: each name, dtype, shape, serialization type and bytes), or ``""`` when
    it carries no array. The same bytes give the same digest at the site that sent
    them and at the coordinator that received them."""
    records = content.array_records
    if not any(len(record) for record in records.values()):
        return ""
    h = hashlib.sha256()
    for name in sorted(records):
        record = records[name]
        for key in sorted(record):
            array = record[key]
            head = f"{name}\0{key}\0{array.dtype}\0{list(array.shape)}\0{array.stype}\0"
            h.update(head.encode())
            h.update(len(array.data).to_bytes(8, "big"))
            h.update(array.data)
    return "sha256:" + h.hexdigest()


def masked_vector_digest(content: RecordDict) -> str:
    """``sha256:HEX`` over the SecAgg+ masked vector a masking-stage reply carries
    (each of its byte strings, length first, in order, under a domain prefix), or
    ``""`` when it carries none."""
    record = content.config_records.get(RECORD_KEY_CONFIGS)
    vector = None if record is None else record.get(Key.MASKED_PARAMETERS)
    if not isinstance(vector, list) or not vector:
        return ""
    h = hashlib.sha256(b"fedvault.secagg-masked-vector.v1\0")
    for part in vector:
        data = part if isinstance(part, bytes) else str(part).encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return "sha256:" + h.hexdigest()


def update_digest(content: RecordDict) -> str:
    """The digest of the update ``content`` carries: its arrays', else its SecAgg+
    masked vector's, else ``""`` (a decline, a protocol stage, a stats answer)."""
    return arrays_digest(content) or masked_vector_digest(content)
