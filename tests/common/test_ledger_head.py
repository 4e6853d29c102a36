"""The ledger head on the wire: the anchor a site publishes, read back exactly, and
a malformed one refused naming the key."""

import pytest
from flwr.app import ConfigRecord, RecordDict

from fedvault.common.protocol import LEDGER_HEAD, LedgerHead

ANCHOR = {
    "dataset_id": "icu-2024",
    "count": 7,
    "hash": "ab" * 32,
    "epsilon": 1.25,
    "time": "2026-11-30T19:00:00+00:00",
}


def test_a_head_travels_as_the_anchor_it_was():
    head = LedgerHead.from_anchor(ANCHOR)
    content = RecordDict({LEDGER_HEAD: head.to_record()})
    assert LedgerHead.from_content(content) == head
    assert head.anchor() == ANCHOR
    assert LedgerHead.from_content(RecordDict()) is None


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("count", -1, "count"),
        ("count", True, "count"),
        ("hash", "zz" * 32, "hash"),
        ("hash", "ab", "hash"),
        ("epsilon", float("nan"), "epsilon"),
        ("dataset_id", "", "dataset id"),
        ("time", 3, "time"),
    ],
)
def test_a_malformed_head_is_refused_naming_the_key(key, value, says):
    with pytest.raises(ValueError, match=f"ledger-head: {says}"):
        LedgerHead.from_anchor(ANCHOR | {key: value})
    record = LedgerHead.from_anchor(ANCHOR).to_record()
    record["dataset-id" if key == "dataset_id" else key] = value
    with pytest.raises(ValueError, match=f"ledger-head: {says}"):
        LedgerHead.from_content(RecordDict({LEDGER_HEAD: ConfigRecord(dict(record))}))
