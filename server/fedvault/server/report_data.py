"""The data sections of ``fedvault report``: per-site data quality, cross-site
skew and, for a model trained from a parent, the drift check.

Drawn from what the run already received and kept in the run folder:
``received.json`` (each site's summary as described by
:func:`fedvault.server.drift.describe`, and all sites pooled) and ``drift.json``.
The sites' full data-quality reports (validity, consistency, timeliness) stay in
their encrypted vaults and never reach the coordinator; what the summaries carry
is each column's missing count, so quality here is completeness.

Cross-site skew is measured against all sites pooled: for a numeric feature the
standardized mean difference ``(mean_site - mean_pooled) / scale_pooled`` (the
scale the model is standardized with: the public one for DP summaries), for a
categorical feature and for the label the population stability index of the
site's shares against the pooled shares (:func:`fedvault.server.drift.psi`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from fedvault.server import drift, report_plots

SHOWN_FEATURES = 12  # features in the skew heat map, the most skewed first


def read_received(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``received.json``, or None (a run from before it was kept)."""
    try:
        doc = json.loads((run_dir / drift.RECEIVED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "sites" in doc else None


def completeness(site: Mapping[str, Any]) -> tuple[float | None, str, float]:
    """Share of non-missing cells, the column missing most, and its missing share."""
    rows = int(site.get("rows") or 0)
    missing = {
        col: int(stats.get("missing", 0))
        for kind in ("numeric", "categorical")
        for col, stats in site.get(kind, {}).items()
    }
    if not rows or not missing:
        return None, "-", 0.0
    worst = max(sorted(missing), key=lambda c: missing[c])
    share = 1 - sum(missing.values()) / (rows * len(missing))
    return share, worst, missing[worst] / rows


def _scale(stats: Mapping[str, Any]) -> float:
    """The pooled scale of a feature (the public one where no std was released)."""
    return float(stats.get("scale") or stats.get("std") or 1.0)


def mean_shifts(received: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per site, each numeric feature's standardized mean difference to the pool."""
    pooled = received["pooled"]["numeric"]
    return {
        name: {
            col: (stats["mean"] - pooled[col]["mean"]) / _scale(pooled[col])
            for col, stats in site["numeric"].items()
            if col in pooled
        }
        for name, site in received["sites"].items()
    }


def category_psi(received: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per site, the PSI of the label and each categorical feature to the pool."""
    pooled = received["pooled"]
    out = {}
    for name, site in received["sites"].items():
        row = {"label": drift.psi(pooled["labels"], site["labels"])}
        for col, stats in site["categorical"].items():
            if base := pooled["categorical"].get(col):
                row[col] = drift.psi(base["counts"], stats["counts"])
        out[name] = row
    return out


def section(run_dir: Path, table: Any, img: Any) -> list[str]:
    """The HTML of the data sections (``table`` and ``img``: the page's own
    formatters)."""
    received = read_received(run_dir)
    if received is None:
        return [
            "<h2>Data: quality and cross-site skew</h2>",
            '<p class="note">This run folder keeps no received summaries '
            "(received.json): written by runs since model versions.</p>",
        ]
    sites = dict(sorted(received["sites"].items()))  # by name, not reply order
    received = {**received, "sites": sites}
    shifts, psis = mean_shifts(received), category_psi(received)
    labels = {n: s["labels"] for n, s in sites.items()}
    rows = []
    for name, site in sites.items():
        share, worst, worst_share = completeness(site)
        top = max(shifts[name].items(), key=lambda kv: abs(kv[1]), default=("-", 0.0))
        rows.append(
            [
                name,
                site["rows"],
                None if share is None else f"{share:.1%}",
                f"{worst} ({worst_share:.1%})" if worst_share else "none",
                psis[name]["label"],
                f"{top[0]} ({top[1]:+.2f})",
            ]
        )
    return [
        "<h2>Data: quality and cross-site skew</h2>",
        '<p class="note">From the summaries the sites released before training '
        "(counts, sums, missing values per column). The sites' full quality "
        "reports stay in their vaults (<code>fedvault data inspect</code> at the "
        "site).</p>",
        img(report_plots.labels_plot(labels), "label distribution per site"),
        img(
            report_plots.shift_plot(shifts, limit=SHOWN_FEATURES),
            "feature shift per site",
        ),
        table(
            (
                "site",
                "rows",
                "complete cells",
                "most missing",
                "label PSI",
                "largest mean shift (std)",
            ),
            rows,
        ),
        *_drift(run_dir, table),
    ]


def _drift(run_dir: Path, table: Any) -> list[str]:
    doc = drift.read_drift(run_dir)
    if doc is None:
        return []
    features: Sequence[Mapping[str, Any]] = doc.get("features") or []
    flagged = [f for f in features if f.get("flagged")]
    shown = [*flagged, *[f for f in features if not f.get("flagged")][:SHOWN_FEATURES]]
    t = doc.get("thresholds") or {}
    return [
        "<h2>Drift since the parent model</h2>",
        f"<p>{len(flagged)} of {len(features)} features shifted since "
        f"{escape(str(doc.get('parent')))} (flagged at a mean shift of "
        f"{t.get('mean_shift')} std, a spread ratio of {t.get('std_ratio')} or a "
        f"PSI of {t.get('psi')}).</p>",
        table(
            ("feature", "kind", "measure", "value", "shifted", "detail"),
            [
                [
                    f["column"],
                    f["kind"],
                    f["measure"],
                    float(f["value"]),
                    "yes" if f["flagged"] else "no",
                    f["detail"],
                ]
                for f in shown
            ],
        ),
        f'<p class="note">Shown: the shifted features and the {SHOWN_FEATURES} '
        "largest of the others; all are in drift.json.</p>",
    ]
