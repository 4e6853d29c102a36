"""The digest of the arrays a message carries, and its round: what a site's access
log and the coordinator's audit log both record of an update, so that one can be
checked against the other."""

from __future__ import annotations

import hashlib

from flwr.app import Message, RecordDict

from fedvault.common.protocol import SERVER_ROUND


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
