"""The head of a site's privacy ledger, as the site publishes it with its replies.

A site attaches a ``ledger-head`` ConfigRecord (:data:`LEDGER_HEAD`) to every reply
it makes for a run (stats, train, evaluate; not to a decline, nor to SecAgg+
protocol stages, whose replies are Flower's): its ledger's anchor at that moment,
exactly what ``fedvault client ledger anchor`` prints (dataset id, record count,
last record's hash, lifetime epsilon after it, time). The coordinator keeps the
heads it received (``ledger-heads.jsonl``, and ``LedgerHead`` entries in the audit
log), so it holds
anchors of every site's ledger, taken by the site itself, that the site or an
auditor can later check against the ledger (``ledger verify --anchor``).

What a head reveals: the dataset id, how many releases were ever charged to the
dataset (every round of every study, at any coordinator) and the lifetime epsilon
(which DP-SGD replies report anyway); nothing about the rows. The hash is a
SHA-256 over records whose fields the coordinator does not all know.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from flwr.app import ConfigRecord, RecordDict

LEDGER_HEAD = "ledger-head"  # ConfigRecord of a site's reply


@dataclass(frozen=True)
class LedgerHead:
    """A ledger's anchor (:func:`fedvault.client.ledger.anchor`) on the wire."""

    dataset_id: str
    count: int
    hash: str
    epsilon: float
    time: str

    def to_record(self) -> ConfigRecord:
        """The ``ledger-head`` record (kebab-case keys)."""
        return ConfigRecord({k.replace("_", "-"): v for k, v in self.anchor().items()})

    def anchor(self) -> dict[str, Any]:
        """The head as ``ledger anchor`` writes it (``ledger verify --anchor``)."""
        return asdict(self)

    @classmethod
    def from_anchor(cls, doc: Mapping[str, Any]) -> LedgerHead:
        """Read an anchor (``ledger anchor``'s JSON, or :meth:`anchor`).

        Raises:
            ValueError: a key is missing or of the wrong type, or the values
                cannot be a ledger's head.
        """
        return cls._checked(
            doc.get("dataset_id"),
            doc.get("count"),
            doc.get("hash"),
            doc.get("epsilon"),
            doc.get("time"),
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> LedgerHead | None:
        """The head a reply carries, or None when it carries none.

        Raises:
            ValueError: the ``ledger-head`` record is malformed (names the key).
        """
        record = content.config_records.get(LEDGER_HEAD)
        if record is None:
            return None
        return cls._checked(
            record.get("dataset-id"),
            record.get("count"),
            record.get("hash"),
            record.get("epsilon"),
            record.get("time"),
        )

    @classmethod
    def _checked(
        cls, dataset: object, count: object, last: object, eps: object, when: object
    ) -> LedgerHead:
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"{LEDGER_HEAD}: dataset id missing")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"{LEDGER_HEAD}: count must be an integer >= 0")
        if not isinstance(last, str) or len(last) != 64:
            raise ValueError(f"{LEDGER_HEAD}: hash must be 64 hex digits")
        try:
            int(last, 16)
        except ValueError:
            raise ValueError(f"{LEDGER_HEAD}: hash must be 64 hex digits") from None
        if isinstance(eps, bool) or not isinstance(eps, int | float):
            raise ValueError(f"{LEDGER_HEAD}: epsilon must be a number")
        if not math.isfinite(eps) or eps < 0:
            raise ValueError(f"{LEDGER_HEAD}: epsilon must be finite and >= 0")
        if not isinstance(when, str):
            raise ValueError(f"{LEDGER_HEAD}: time must be text")
        return cls(dataset, count, last, float(eps), when)
