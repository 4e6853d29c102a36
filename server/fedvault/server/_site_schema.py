"""The schema contract ``fedvault simulate`` gives its simulated data sites: what
they may declare (bounds, label classes) before their summary release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import tomli_w

from fedvault.common.data import default_dataset

MIN_DECLARED_CLASS = 10


def site_schema(
    options: Any,
    sites: list[tuple[str, pd.DataFrame | Path]],
    work: Path,
    *,
    regression: bool = False,
) -> dict[str, str]:
    """The embedded data's schema contract: its features' published ranges (min and
    max over the public dataset, as scikit-learn documents them), which the sites
    clip to before their summary release, and its label classes; for a
    ``regression`` its numeric target's published range instead. User data gets
    only its label classes held by at least MIN_DECLARED_CLASS rows of the file
    (one party holds every site), a regression on it no schema: its sites bound
    their values with asinh (docs/privacy.md)."""
    if regression and options.data:
        return {}
    if options.vaults:
        return {}
    path = work / "schema.toml"
    if not path.exists():
        target = options.target
        frame = pd.concat([part for _, part in sites if not isinstance(part, Path)])
        # User data: its columns, as features, without bounds or categories.
        columns: dict[str, Any] = {
            str(c): {
                "type": "float" if pd.api.types.is_numeric_dtype(frame[c]) else "text",
                "role": "feature",
            }
            for c in frame.columns
            if c != target
        }
        if not options.data:
            frame = default_dataset()
            columns = published_ranges(target)
        if regression:
            lo, hi = float(frame[target].min()), float(frame[target].max())
            columns[target] = {"type": "float", "role": "target", "min": lo, "max": hi}
        else:
            counts = frame[target].astype(str).value_counts()
            keep = sorted(str(k) for k, v in counts.items() if v >= MIN_DECLARED_CLASS)
            columns[target] = {"type": "category", "role": "target", "categories": keep}
        doc = {"dataset": {"name": "breast-cancer"}, "columns": columns}
        path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return {"schema": str(path)}


def published_ranges(target: str) -> dict[str, dict[str, Any]]:
    """The embedded breast-cancer data's features as schema columns (TOML form),
    with their published ranges: min and max over the public dataset, as
    scikit-learn documents them; every column but ``target``."""
    frame = default_dataset()
    return {
        str(c): {
            "type": "float",
            "role": "feature",
            "min": float(frame[c].min()),
            "max": float(frame[c].max()),
        }
        for c in frame.columns
        if c != target
    }
