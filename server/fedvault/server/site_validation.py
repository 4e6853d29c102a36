"""Each site's own validation figures, as it released them, kept per round.

A site's evaluate reply holds its validation example count and accuracy (or its
regression metrics without DP). Under DP both counts behind an accuracy are noisy
(Gaussian, charged to the site's ledger; docs/privacy.md), so a small site's figure
can be far from its true accuracy: the model card and the report say so beside them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Message

from fedvault.common.protocol import METRICS, NUM_EXAMPLES
from fedvault.common.records import number
from fedvault.server.sites import SiteBook

VAL_SITES = "val_sites"  # the history row's key: {site: {metric: value}}


def validation_by_site(
    book: SiteBook, replies: Iterable[Message], keys: Iterable[str]
) -> dict[str, dict[str, float]]:
    """``{site name: {"num-examples": n, key: value, ...}}`` of the round's usable
    evaluate replies; a value a reply lacks is NaN."""
    wanted = (NUM_EXAMPLES, *keys)
    out: dict[str, dict[str, float]] = {}
    for reply in replies:
        record = reply.content.metric_records.get(METRICS)
        values = {k: number(record or {}, k, math.nan) for k in wanted}
        out[book.name_of(reply)] = values
    return out


def last_by_site(history: list[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Each site's figures from the last round it released them in."""
    last: dict[str, dict[str, float]] = {}
    for row in history:
        last |= dict(row.get(VAL_SITES) or {})
    return last


def per_site_text(per_site: object, metric: str) -> str:
    """The model card's one line on the sites' own figures."""
    if not isinstance(per_site, dict):
        return str(per_site)
    if not per_site:
        return "none released"
    shown = ", ".join(
        f"{site} {v.get(metric, math.nan):.3f} on {v.get(NUM_EXAMPLES, 0):.0f}"
        for site, v in sorted(per_site.items())
    )
    return (
        f"{shown} validation rows (each site's last release on its own split; under "
        "DP both counts are noisy, so a small site's figure can be far off)"
    )
