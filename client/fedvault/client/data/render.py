"""Rich tables for the data commands: manifests, schemas and quality reports.

Never rows: only the manifest's metadata and the aggregate quality report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

from fedvault.client.data.vault_format import Manifest


def manifest_table(manifest: Manifest, *, vault: str) -> Table:
    table = Table(title=f"vault {vault}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    details = manifest.details
    rows = [
        ("dataset id", manifest.dataset_id),
        ("key id", manifest.key_id),
        ("format version", str(manifest.format_version)),
        ("created", manifest.created),
        ("source", str(details.get("source", "?"))),
        ("rows", str(manifest.rows)),
        ("chunks", str(len(manifest.chunks))),
        ("target", manifest.target),
    ]
    if "dataset" in manifest.schema:
        name = manifest.schema["dataset"]["name"]
        rows.append(("schema", f"{name} ({manifest.schema_hash[:16]})"))
    else:
        shape = "x".join(str(v) for v in manifest.schema.get("shape", []))
        rows.append(("images", f"{manifest.rows} of {shape} (channels x H x W)"))
    anonymization = details.get("anonymization", {})
    if anonymization:
        rows.append(("k-anonymity", f"k = {anonymization.get('k')}"))
        rows.append(("dropped", ", ".join(anonymization.get("dropped", [])) or "-"))
        rows.append(
            ("pseudonymized", ", ".join(anonymization.get("pseudonymized", [])) or "-")
        )
    if "key-rotated-from" in details:
        rows.append(("rotated from key", str(details["key-rotated-from"])))
    for name, value in rows:
        table.add_row(name, value)
    return table


def columns_table(manifest: Manifest) -> Table:
    table = Table(title="stored columns", title_justify="left")
    for header in ("column", "type", "role", "rule"):
        table.add_column(header)
    specs = manifest.schema.get("columns", {})
    for name, role in manifest.columns:
        spec = specs.get(name, {})
        rule = spec.get("generalize")
        text = ", ".join(f"{k}={v}" for k, v in rule.items()) if rule else ""
        table.add_row(name, str(spec.get("type", "?")), role, text)
    return table


def quality_table(quality: Mapping[str, Any]) -> Table:
    table = Table(title="data quality", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    consistency = quality.get("consistency", {})
    timeliness = quality.get("timeliness") or {}
    rows = [
        ("rows received", _count(quality.get("rows-received"))),
        ("rows invalid", _count(quality.get("rows-invalid"))),
        ("rows suppressed (k-anonymity)", _count(quality.get("rows-suppressed"))),
        ("rows stored", _count(quality.get("rows-stored"))),
        ("completeness", _share(quality.get("completeness", {}).get("overall"))),
        ("validity", _share(quality.get("validity", {}).get("overall"))),
        ("consistency (rules passed)", _share(consistency.get("rules-passed"))),
        ("duplicate rate", _share(consistency.get("duplicate-rate"))),
        ("timeliness", _share(timeliness.get("share"))),
        ("availability", _share(quality.get("availability"))),
    ]
    for label, info in quality.get("class-balance", {}).items():
        rows.append((f"class {label}", f"{info['count']} ({_share(info['share'])})"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def weak_columns_table(quality: Mapping[str, Any], *, below: float = 1.0) -> Table:
    """Columns whose completeness or validity is below ``below``."""
    table = Table(title="columns with gaps", title_justify="left")
    for header in ("column", "completeness", "validity"):
        table.add_column(header)
    complete = quality.get("completeness", {}).get("columns", {})
    valid = quality.get("validity", {}).get("columns", {})
    for name in complete:
        c, v = complete.get(name), valid.get(name)
        if (c is not None and c < below) or (v is not None and v < below):
            table.add_row(name, _share(c), _share(v))
    return table


def _share(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}%"


def _count(value: Any) -> str:
    return "-" if value is None else str(value)


def image_quality_table(quality: Mapping[str, Any]) -> Table:
    """The quality report of an image vault: files read and refused, class
    balance, original sizes and channels, exact duplicates."""
    table = Table(title="image quality", title_justify="left")
    table.add_column("metric")
    table.add_column("value")
    bad = quality.get("unreadable", [])
    rows = [
        ("files", str(quality.get("files"))),
        ("stored", str(quality.get("stored"))),
        ("not usable", str(len(bad))),
        *((f"  {b['file']}", str(b["reason"])) for b in bad[:20]),
        ("class balance", _pairs(quality.get("class-balance", {}))),
        ("original sizes", _pairs(quality.get("original-sizes", {}))),
        ("channels", _pairs(quality.get("channels", {}))),
        ("exact duplicates", str(len(quality.get("exact-duplicates", [])))),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _pairs(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "-"
