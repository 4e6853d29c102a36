"""Typed access to Flower records (the one place both roles read message contents).

Flower's record values are unions of many types; these helpers check the type
they expect and raise :class:`ValueError` naming the key otherwise, so a malformed
message is refused with a clear reason instead of crashing the reader.
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedvault.common.compression import PACKED_KEY, PACKED_TYPE


def packed_record(data: bytes) -> ArrayRecord:
    """The ArrayRecord of a packed int8 update (:func:`compression.pack`): one
    array of raw bytes, typed with fedvault's layout."""
    array = Array(dtype="bytes", shape=(len(data),), stype=PACKED_TYPE, data=data)
    return ArrayRecord({PACKED_KEY: array})


def array_record(content: RecordDict, key: str) -> ArrayRecord:
    if key not in content.array_records:
        raise ValueError(f"message has no ArrayRecord {key!r}")
    return content.array_records[key]


def config_record(content: RecordDict, key: str) -> ConfigRecord:
    if key not in content.config_records:
        raise ValueError(f"message has no ConfigRecord {key!r}")
    return content.config_records[key]


def metric_record(content: RecordDict, key: str) -> MetricRecord:
    if key not in content.metric_records:
        raise ValueError(f"message has no MetricRecord {key!r}")
    return content.metric_records[key]


def number(
    record: Mapping[str, object], key: str, default: float | None = None
) -> float:
    """The real number stored under ``key`` (bool is refused); may be NaN/inf."""
    if key not in record:
        if default is None:
            raise ValueError(f"record has no {key!r}")
        return default
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key!r} is not a number")
    return float(value)


def text(record: Mapping[str, object], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is not a string")
    return value
